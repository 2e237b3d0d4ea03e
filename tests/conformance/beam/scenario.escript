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
    setup(),
    serve();
%% Distributed, with a peer node for the scenarios' "%peer" (epmd must run on
%% $ERL_EPMD_PORT: the caller starts its own).
main(["dist", Cookie]) ->
    setup(),
    Name = list_to_atom("scen" ++ os:getpid() ++ "@127.0.0.1"),
    {ok, _} = net_kernel:start([Name, longnames]),
    erlang:set_cookie(list_to_atom(Cookie)),
    {ok, _Peer, PeerNode} = peer:start_link(#{
        name => list_to_atom("peer" ++ os:getpid()),
        host => "127.0.0.1",
        longnames => true,
        %% Controlled over stdio, so that disconnecting it does not stop it.
        connection => standard_io,
        args => ["-setcookie", Cookie]
    }),
    true = net_kernel:connect_node(PeerNode),
    ok = rpc:call(PeerNode, logger, set_primary_config, [level, none]),
    persistent_term:put(peer, PeerNode),
    serve();
main(_) ->
    io:put_chars(standard_error, "usage: scenario.escript [dist COOKIE] < SCENARIOS\n"),
    halt(2).

setup() ->
    %% Crash reports are not part of the trace (pybeam logs its own elsewhere).
    logger:set_primary_config(level, none),
    ets:new(roles, [named_table, public, set]),
    ets:new(refs, [named_table, public, set]),
    ets:new(trace, [named_table, public, ordered_set]).

peer() -> persistent_term:get(peer).

alive(P) when node(P) =:= node() -> is_process_alive(P);
alive(P) -> rpc:call(node(P), erlang, is_process_alive, [P], 5000).

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
    %% Connected again after a scenario that disconnected.
    [true = net_kernel:connect_node(peer()) || persistent_term:get(peer, '$no_peer') =/= '$no_peer'],
    ets:insert(roles, {procs, Procs}),
    {Main, MRef} = spawn_monitor(fun() -> start(main, MainOps) end),
    receive {'DOWN', MRef, process, Main, _} -> ok after 20000 -> exit(Main, kill) end,
    timer:sleep(100),
    Roles = lists:sort([R || {{role, R}, _} <- ets:tab2list(roles)]),
    [record(R, {final, alive(pid_of(R))}) || R <- Roles],
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
resolve('%peer') -> peer();
resolve('%main') -> node();
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
op(_, [spawn_on, Role, Body, plain]) ->
    {M, F, A} = remote_body(Body),
    bind(Role, spawn(peer(), M, F, A));
op(_, [spawn_on, Role, Body, link]) ->
    {M, F, A} = remote_body(Body),
    bind(Role, spawn_link(peer(), M, F, A));
op(_, [spawn_on, Role, Body, monitor, RefName]) ->
    {M, F, A} = remote_body(Body),
    {Pid, Ref} = spawn_monitor(peer(), M, F, A),
    ets:insert(refs, {Ref, RefName}),
    bind(Role, Pid);
op(_, [rpc_register, Name, Target]) ->
    true = rpc:call(peer(), erlang, register, [Name, resolve(Target)]);
op(Role, [rpc, Kind]) ->
    {M, F, A} = rpc_call(Kind),
    record(Role, {rpc, Kind, rpc:call(peer(), M, F, A)});
op(_, [disconnect]) ->
    erlang:disconnect_node(peer());
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

%% What a process on the peer runs (no code of ours is loaded there).
remote_body(idle) -> {timer, sleep, [infinity]};
remote_body(exit_boom) -> {erlang, exit, [boom]};
remote_body(crash) -> {erlang, error, [badarith]}.

rpc_call(ok) -> {erlang, abs, [-1]};
rpc_call(badarith) -> {erlang, error, [badarith]};
rpc_call(exit_boom) -> {erlang, exit, [boom]}.

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
    Refs = [R || {R, Name} <- ets:tab2list(refs), Name =:= A],
    case {atom_to_list(A), Refs} of
        {[$@ | _], _} -> bound(resolve(A), N, B);
        {_, [Ref | _]} -> bound(Ref, N, B);
        _ -> {io_lib:format("~p", [A]), B}
    end;
pattern_text(I, _, B) when is_integer(I) ->
    {integer_to_list(I), B};
pattern_text(T, N, B) when is_tuple(T) ->
    {Parts, B2} = lists:mapfoldl(fun(X, Acc) -> pattern_text(X, N, Acc) end, B, tuple_to_list(T)),
    {"{" ++ lists:join(",", Parts) ++ "}", B2}.

%% A value in a pattern: a variable bound to it.
bound(Value, N, B) ->
    Var = list_to_atom("P" ++ integer_to_list(N + length(B))),
    {atom_to_list(Var), [{Var, Value} | B]}.

%% The normalised text of a term: pids by role, refs by name, a crash by its
%% error atom ({badarith, Stack} -> badarith).
fmt(A) when is_atom(A) ->
    case {A =:= node(), A =:= persistent_term:get(peer, '$no_peer')} of
        {true, _} -> "node_main";
        {_, true} -> "node_peer";
        _ -> atom_to_list(A)
    end;
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
