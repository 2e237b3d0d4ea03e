#!/usr/bin/env escript
%%! +S 1 -noshell
%% The BEAM interpreter of pybeam's conformance scenarios (see
%% tests/conformance/beam_runner.py, which writes the scenarios and reads the
%% traces back). Usage: escript scenario.escript < SCENARIOS, one scenario a
%% line, as the term {scenario, MainOps, #{Role => Ops}}. For each it prints
%% the normalised trace, one "Role<TAB>Event" line per event (each role's in
%% its order), then "end".
%%
%% One scheduler (+S 1): a process then runs until it waits, as a pybeam
%% process runs until its next await; without it, which of two ready
%% processes runs first is up to the schedulers, which no scenario may test.
-mode(compile).

main([]) ->
    %% Crash reports are not part of the trace (pybeam logs its own elsewhere).
    logger:set_primary_config(level, none),
    ets:new(roles, [named_table, public, set]),
    ets:new(refs, [named_table, public, set]),
    ets:new(trace, [named_table, public, ordered_set]),
    serve();
main(_) ->
    io:put_chars(standard_error, "usage: scenario.escript < SCENARIOS\n"),
    halt(2).

%% One scenario a line, as an Erlang term {scenario, MainOps, #{Role => Ops}}.
serve() ->
    case io:get_line("") of
        eof ->
            halt(0);
        Line ->
            {ok, Tokens, _} = erl_scan:string(Line),
            {ok, {scenario, MainOps, Procs}} = erl_parse:parse_term(Tokens),
            run_scenario(MainOps, Procs),
            serve()
    end.

run_scenario(MainOps, Procs) ->
    [ets:delete_all_objects(T) || T <- [roles, refs, trace]],
    ets:insert(roles, {procs, Procs}),
    {Main, MRef} = spawn_monitor(fun() -> start(main, MainOps) end),
    receive {'DOWN', MRef, process, Main, _} -> ok after 20000 -> exit(Main, kill) end,
    timer:sleep(100),
    Roles = lists:sort([R || {{role, R}, _} <- ets:tab2list(roles)]),
    [record(R, {final, is_process_alive(pid_of(R))}) || R <- Roles],
    Lines = [io_lib:format("~s\t~s~n", [R, fmt(E)]) || {{_, R}, E} <- ets:tab2list(trace)],
    %% Nothing of this scenario may outlive it (names, links, timers).
    [exit(P, kill) || {{role, _}, P} <- ets:tab2list(roles)],
    io:put_chars([Lines, "end\n"]).

start(Role, Ops) ->
    ets:insert(roles, [{{role, Role}, self()}, {{pid, self()}, Role}]),
    run(Role, Ops).

run(_, []) -> ok;
run(Role, [Op | Ops]) ->
    op(Role, Op),
    run(Role, Ops).

record(Role, Event) ->
    ets:insert(trace, {{erlang:unique_integer([monotonic]), Role}, Event}).

pid_of(Role) ->
    case ets:lookup(roles, {role, Role}) of
        [{_, Pid}] -> Pid;
        [] -> error({unknown_role, Role})
    end.

body(Role) ->
    [{procs, Procs}] = ets:lookup(roles, procs),
    maps:get(Role, Procs).

%% '@role' in a term stands for that role's pid.
resolve(A) when is_atom(A) ->
    case atom_to_list(A) of
        [$@ | Role] -> pid_of(list_to_atom(Role));
        _ -> A
    end;
resolve(T) when is_tuple(T) -> list_to_tuple([resolve(X) || X <- tuple_to_list(T)]);
resolve(X) -> X.

%% The spawner records the child's role before either runs on (one scheduler).
new_role(Role) ->
    fun() -> run(Role, body(Role)) end.

bind(Role, Pid) -> ets:insert(roles, [{{role, Role}, Pid}, {{pid, Pid}, Role}]).

op(_, [spawn, Role, plain]) ->
    bind(Role, spawn(new_role(Role)));
op(_, [spawn, Role, link]) ->
    bind(Role, spawn_link(new_role(Role)));
op(_, [spawn, Role, monitor, RefName]) ->
    {Pid, Ref} = spawn_monitor(new_role(Role)),
    ets:insert(refs, {Ref, RefName}),
    bind(Role, Pid);
op(_, [send, Dest, Msg]) ->
    resolve(Dest) ! resolve(Msg);
op(Role, [recv, Pattern, Timeout]) ->
    record(Role, {got, selective_receive(Pattern, Timeout)});
op(Role, [flush]) ->
    record(Role, {flushed, flush([])});
op(Role, [flush_sorted]) ->
    Keyed = lists:sort([{lists:flatten(fmt(M)), M} || M <- flush([])]),
    record(Role, {flushed, [M || {_, M} <- Keyed]});
op(_, [exit, Reason]) ->
    exit(Reason);
op(_, [exit_sig, Target, Reason]) ->
    exit(resolve(Target), Reason);
op(_, [trap, Flag]) ->
    process_flag(trap_exit, Flag);
op(_, [register, Name]) ->
    register(Name, self());
op(_, [unregister, Name]) ->
    unregister(Name);
op(Role, [whereis, Name]) ->
    record(Role, {whereis, Name, whereis(Name)});
op(_, [link, Target]) ->
    link(resolve(Target));
op(_, [unlink, Target]) ->
    unlink(resolve(Target));
op(_, [monitor, Target, RefName]) ->
    Ref = monitor(process, resolve(Target)),
    ets:insert(refs, {Ref, RefName});
op(Role, [demonitor, RefName, Opt]) ->
    [Ref] = [R || {R, N} <- ets:tab2list(refs), N =:= RefName],
    Opts =
        case Opt of
            none -> [];
            flush -> [flush];
            info -> [info];
            both -> [flush, info]
        end,
    record(Role, {demonitor, RefName, erlang:demonitor(Ref, Opts)});
op(_, [send_after, Ms, Dest, Msg, Name]) ->
    T = erlang:send_after(Ms, resolve(Dest), resolve(Msg)),
    put({timer, Name}, T);
op(Role, [cancel_timer, Name]) ->
    record(Role, {cancel_timer, Name, left(erlang:cancel_timer(get({timer, Name})))});
op(Role, [read_timer, Name]) ->
    record(Role, {read_timer, Name, left(erlang:read_timer(get({timer, Name})))});
op(Role, [is_alive, Target]) ->
    record(Role, {is_alive, Target, is_process_alive(resolve(Target))});
op(_, [crash, badarith]) ->
    erlang:error(badarith);
op(_, [crash, badarg]) ->
    erlang:error(badarg);
op(_, [sleep, Ms]) ->
    timer:sleep(Ms);
op(Role, [log, Term]) ->
    record(Role, {log, resolve(Term)}).

left(false) -> false;
left(N) when is_integer(N) -> time.

flush(Acc) ->
    receive M -> flush([M | Acc]) after 0 -> lists:reverse(Acc) end.

%% A receive whose pattern is only known at run time: evaluated as source.
selective_receive(Pattern, Timeout) ->
    {Text, Bindings} = pattern_text(Pattern, 0, []),
    After = case Timeout of infinity -> "infinity"; _ -> integer_to_list(Timeout) end,
    Src = "receive " ++ Text ++ " = M__ -> M__ after " ++ After ++ " -> '$timeout' end.",
    {ok, Tokens, _} = erl_scan:string(lists:flatten(Src)),
    {ok, Exprs} = erl_parse:parse_exprs(Tokens),
    B = lists:foldl(fun({K, V}, Acc) -> erl_eval:add_binding(K, V, Acc) end, erl_eval:new_bindings(), Bindings),
    {value, Value, _} = erl_eval:exprs(Exprs, B),
    case Value of
        '$timeout' -> timeout;
        _ -> Value
    end.

pattern_text('_', _, B) ->
    {"_", B};
pattern_text(A, N, B) when is_atom(A) ->
    case atom_to_list(A) of
        [$@ | _] ->
            Var = list_to_atom("P" ++ integer_to_list(N + length(B))),
            {atom_to_list(Var), [{Var, resolve(A)} | B]};
        _ ->
            {io_lib:format("~p", [A]), B}
    end;
pattern_text(I, _, B) when is_integer(I) ->
    {integer_to_list(I), B};
pattern_text(T, N, B) when is_tuple(T) ->
    {Parts, B2} = lists:mapfoldl(fun(X, Acc) -> pattern_text(X, N, Acc) end, B, tuple_to_list(T)),
    {"{" ++ lists:join(",", Parts) ++ "}", B2}.

%% The normalised text of a term: pids by role, refs by name, a crash by its
%% error atom ({badarith, Stack} -> badarith).
fmt(A) when is_atom(A) -> atom_to_list(A);
fmt(I) when is_integer(I) -> integer_to_list(I);
fmt(P) when is_pid(P) ->
    case ets:lookup(roles, {pid, P}) of
        [{_, Role}] -> atom_to_list(Role);
        [] -> "pid?"
    end;
fmt(R) when is_reference(R) ->
    case ets:lookup(refs, R) of
        [{_, Name}] -> atom_to_list(Name);
        [] -> "ref?"
    end;
fmt({Kind, [{_, _, _, _} | _]}) when is_atom(Kind) -> atom_to_list(Kind);
fmt(T) when is_tuple(T) -> "{" ++ lists:join(",", [fmt(X) || X <- tuple_to_list(T)]) ++ "}";
fmt(L) when is_list(L) -> "[" ++ lists:join(",", [fmt(X) || X <- L]) ++ "]";
fmt(X) -> io_lib:format("~p", [X]).
