%% The Erlang/OTP side of `python -m benchmarks compare`: the same workloads
%% as the Python peers, measured the same way. Compiled at run time into a
%% temporary directory (nothing compiled is committed) and run as
%%   erl -noshell -name N@127.0.0.1 -setcookie C -pa DIR -run bench_compare main WORKLOAD SIZE
%% It prints one line "RESULT V [V2]" and halts; a failure exits non-zero.
-module(bench_compare).
-export([main/1, add/2, sink/1, ponger/0, idle/0]).

main([Workload, Size | Live]) ->
    N = list_to_integer(Size),
    try run(list_to_atom(Workload), N, Live) of
        Values ->
            Text = [io_lib:format("~.6f", [float(V)]) || V <- Values],
            io:format("RESULT ~s~n", [lists:join(" ", Text)]),
            halt(0)
    catch
        Class:Reason:Stack ->
            io:format(standard_error, "~p:~p~n~p~n", [Class, Reason, Stack]),
            halt(1)
    end.

now_us() -> erlang:monotonic_time(microsecond).

seconds_since(T0) -> (now_us() - T0) / 1.0e6.

%% -- local ------------------------------------------------------------------

%% Spawn-and-exit rate of N processes with each number of idle ones alive.
run(spawn_scale, N, [Levels]) ->
    scale(N, [list_to_integer(L) || L <- string:split(Levels, ",", all)], 0, []);
run(Workload, N, []) ->
    run(Workload, N).

scale(_, [], _, Rates) ->
    lists:reverse(Rates);
scale(N, [Level | Levels], Alive, Rates) ->
    spawn_idle(Level - Alive),
    wait_idle(),
    [Rate] = run(spawn_exit, N),
    scale(N, Levels, Level, [Rate | Rates]).

run(one_way, N) ->
    Me = self(),
    Sink = spawn(fun() -> sink(N, Me) end),
    T0 = now_us(),
    send_n(Sink, 0, N),
    receive done -> ok end,
    [N / seconds_since(T0)];
run(ping_pong, N) ->
    P = spawn(fun ponger/0),
    T0 = now_us(),
    ping(P, N),
    Rate = N / seconds_since(T0),
    P ! stop,
    [Rate];
run(spawn_exit, N) ->
    T0 = now_us(),
    spawn_n(N - 1, 0),
    {_, Ref} = spawn_monitor(fun() -> ok end),
    receive {'DOWN', Ref, process, _, _} -> ok end,
    [N / seconds_since(T0)];
run(memory, N) ->
    %% Resident set size of the whole VM, as for the Python peers.
    erlang:garbage_collect(),
    R0 = rss(),
    Me = self(),
    Spawner = spawn(fun() -> spawn_idle(N), Me ! spawned, receive stop -> ok end end),
    receive spawned -> ok end,
    wait_idle(),
    R1 = rss(),
    Spawner ! stop,
    [(R1 - R0) / N];
%% -- two nodes (the peer is stopped, or has halted by itself after a disconnect) --
run(Cross, N) ->
    {ok, Peer, Node} = start_peer(),
    try cross(Cross, Node, N)
    after catch peer:stop(Peer)
    end.

cross(cross_one_way, Node, N) ->
    Me = self(),
    Sink = spawn(Node, ?MODULE, sink, [Me]),
    Sink ! {count, N},
    T0 = now_us(),
    send_n(Sink, 0, N),
    receive done -> ok after 120000 -> error(timeout) end,
    [N / seconds_since(T0)];
cross(cross_rtt, Node, N) ->
    P = spawn(Node, ?MODULE, ponger, []),
    ping(P, 10),  % the connection and the code are warm before the clock
    Times = lists:sort([round_trip(P) || _ <- lists:seq(1, N)]),
    P ! stop,
    [lists:nth(N div 2 + 1, Times), lists:nth(min(N, trunc(N * 0.99) + 1), Times)];
cross(rpc, Node, N) ->
    3 = rpc:call(Node, ?MODULE, add, [1, 2]),
    T0 = now_us(),
    rpc_n(Node, N),
    [N / seconds_since(T0)];
cross(fanout, Node, N) ->
    Me = self(),
    Producer = spawn(Node, fun idle/0),
    Watchers = [spawn(fun() -> watch(Producer, Me) end) || _ <- lists:seq(1, N)],
    [receive {watching, W} -> ok end || W <- Watchers],
    T0 = now_us(),
    true = erlang:disconnect_node(Node),
    [receive {down, W, noconnection} -> ok end || W <- Watchers],
    [(now_us() - T0) / 1000.0].

start_peer() ->
    Name = list_to_atom("peer" ++ integer_to_list(erlang:unique_integer([positive]))),
    {ok, Peer, Node} = peer:start_link(#{
        name => Name,
        host => "127.0.0.1",
        longnames => true,
        args => ["-setcookie", atom_to_list(erlang:get_cookie()), "-pa", filename:dirname(code:which(?MODULE))]
    }),
    {ok, Peer, Node}.

%% -- pieces -------------------------------------------------------------------

%% Yield every 1,024 messages, as the Python senders do.
send_n(_, N, N) -> ok;
send_n(P, I, N) ->
    P ! {msg, I},
    case I band 1023 of
        1023 -> erlang:yield();
        _ -> ok
    end,
    send_n(P, I + 1, N).

sink(N, ReplyTo) ->
    count(N),
    ReplyTo ! done.

sink(ReplyTo) ->
    receive {count, N} -> sink(N, ReplyTo) end.

count(0) -> ok;
count(N) -> receive _ -> count(N - 1) end.

ponger() ->
    receive
        stop -> ok;
        From -> From ! From, ponger()
    end.

ping(_, 0) -> ok;
ping(P, K) ->
    Me = self(),
    P ! Me,
    receive Me -> ping(P, K - 1) end.

round_trip(P) ->
    T0 = erlang:monotonic_time(nanosecond),
    Me = self(),
    P ! Me,
    receive Me -> ok end,
    (erlang:monotonic_time(nanosecond) - T0) / 1000.0.

spawn_n(0, _) -> ok;
spawn_n(K, I) ->
    spawn(fun() -> ok end),
    case I band 1023 of
        1023 -> erlang:yield();
        _ -> ok
    end,
    spawn_n(K - 1, I + 1).

rpc_n(_, 0) -> ok;
rpc_n(Node, K) ->
    Expected = K + 1,
    Expected = rpc:call(Node, ?MODULE, add, [K, 1]),
    rpc_n(Node, K - 1).

add(A, B) -> A + B.

idle() ->
    receive _ -> ok end.

watch(Producer, Collector) ->
    Ref = monitor(process, Producer),
    Collector ! {watching, self()},
    receive {'DOWN', Ref, process, _, Reason} -> Collector ! {down, self(), Reason} end.

spawn_idle(K) when K =< 0 -> ok;
spawn_idle(K) ->
    spawn(fun idle/0),
    spawn_idle(K - 1).

%% Every spawned process has run to its receive: no scheduler has work left.
wait_idle() ->
    case erlang:statistics(total_run_queue_lengths_all) of
        0 -> timer:sleep(50);
        _ -> timer:sleep(10), wait_idle()
    end.

rss() ->
    {ok, Text} = file:read_file("/proc/self/statm"),
    [_, Resident | _] = string:split(binary_to_list(Text), " ", all),
    list_to_integer(Resident) * 4096.
