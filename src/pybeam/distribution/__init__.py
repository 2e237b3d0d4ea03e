"""Distribution: how pybeam nodes find each other, authenticate and exchange frames.

This package is the equivalent of Erlang's ``epmd``, ``auth`` and ``dist_util``.
Each module holds one concept and they stack bottom-up:

``cookie``
    The shared secret. :func:`~pybeam.distribution.cookie.resolve_cookie` picks it from an
    argument, ``$PYBEAM_COOKIE`` or ``~/.pybeam.cookie`` (created on first use,
    like ``~/.erlang.cookie``).
``framing``
    The byte stream: every frame is a 4-byte big-endian length and one encoded
    term. Reading (:func:`~pybeam.distribution.framing.read_frame`,
    :class:`~pybeam.distribution.framing.FrameReader`) and batched writing
    (:class:`~pybeam.distribution.framing.FrameWriter`).
``handshake``
    The mutual challenge-response that opens a connection between two nodes:
    both prove they know the cookie without sending it.
    :func:`~pybeam.distribution.handshake.initiate` and
    :func:`~pybeam.distribution.handshake.accept`.
``epmd``
    The port mapper: maps node names to listening ports on a host and hands out
    each node's *creation*. Server (:class:`~pybeam.distribution.epmd.EpmdServer`,
    ``python -m pybeam.distribution.epmd``) and client (``register``, ``lookup``,
    ``names``).

``connection``
    One live connection to a peer: batching (the only place it happens on the way
    out), ticks, backpressure, reading.
``peer``
    One record per peer node and the state machine of its connection (as OTP's
    ``#connection{state = pending | up | up_pending}``): every transition in one table.
``local``
    The narrow interface the distribution uses the node through.
``signals``
    Control messages from a peer turned into local signals; what crosses a connection.
``net_kernel``
    The node's distribution layer: listening, connecting, carrying out the peer
    records' transitions.

Nothing is imported here, so ``import pybeam.distribution`` stays cheap; import the
submodules you need.
"""
