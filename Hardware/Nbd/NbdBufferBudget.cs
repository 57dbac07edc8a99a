namespace ActorBlk.Hardware.Nbd;

/// <summary>
/// The payload memory of one <see cref="NbdServer"/>, over all its connections. Every slot buffer
/// is counted in one of two places: <see cref="InUse"/> while its slot serves a request (from the
/// request's header until its reply went out), or <see cref="Kept"/> while an idle slot keeps it
/// for reuse. A request whose buffer must grow takes the new size with <see cref="TakeAsync"/>,
/// which waits, first come first served, while <see cref="InUse"/> would pass the capacity; the
/// connection meanwhile reads nothing more. Idle buffers are kept only up to a quarter of the
/// capacity, and never while a taker waits. So the server holds at most the capacity plus that
/// quarter, whatever its clients send: a client that pipelines large reads and never reads the
/// replies makes other connections wait (until <see cref="NbdServerOptions.StallTimeout"/> closes
/// it), not the node run out of memory.
/// </summary>
/// <remarks>
/// The kernel bounds socket memory the same way, with a budget over every socket
/// (<c>tcp_mem</c>) on top of each socket's own buffers; here each connection's own bound is
/// <see cref="NbdServerOptions.MaxInFlight"/> requests of at most
/// <see cref="NbdServerOptions.MaxPayload"/>.
/// </remarks>
internal sealed class NbdBufferBudget
{
    private readonly Lock _lock = new();
    private readonly LinkedList<Waiter> _waiters = new();
    private long _inUse;
    private long _kept;
    private long _waits;

    /// <param name="capacity">Bytes requests in flight may hold; at least the largest single buffer.</param>
    public NbdBufferBudget(long capacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, NbdRequestSlot.MinimumBytes);
        Capacity = capacity;
        KeepCapacity = capacity / 4;
    }

    /// <summary>Bytes that requests in flight may hold together.</summary>
    public long Capacity { get; }

    /// <summary>Bytes idle slots may keep together.</summary>
    public long KeepCapacity { get; }

    /// <summary>Bytes of buffers held by requests in flight.</summary>
    public long InUse
    {
        get
        {
            lock (_lock)
            {
                return _inUse;
            }
        }
    }

    /// <summary>Bytes of buffers kept by idle slots.</summary>
    public long Kept => Interlocked.Read(ref _kept);

    /// <summary>Takers waiting now.</summary>
    public int Waiting
    {
        get
        {
            lock (_lock)
            {
                return _waiters.Count;
            }
        }
    }

    /// <summary>Takes that had to wait, since the server started.</summary>
    public long Waits => Interlocked.Read(ref _waits);

    /// <summary>Takes <paramref name="bytes"/> for a request's buffer when they fit now and nobody waits; false (nothing taken) otherwise.</summary>
    public bool TryTake(long bytes)
    {
        lock (_lock)
        {
            if (_waiters.Count != 0 || !Fits(bytes))
            {
                return false;
            }

            _inUse += bytes;
            return true;
        }
    }

    /// <summary>
    /// Takes <paramref name="bytes"/> for a request's buffer: at once when they fit and nobody
    /// waits, else when every earlier taker has been served and enough was given back. A taker
    /// cancelled while it waits takes nothing.
    /// </summary>
    public ValueTask TakeAsync(long bytes, CancellationToken ct)
    {
        Waiter waiter;
        lock (_lock)
        {
            if (_waiters.Count == 0 && Fits(bytes))
            {
                _inUse += bytes;
                return default;
            }

            waiter = new Waiter(bytes);
            waiter.Node = _waiters.AddLast(waiter);
            _waits++;
        }

        if (ct.CanBeCanceled)
        {
            waiter.Registration = ct.UnsafeRegister(static (state, token) => ((NbdBufferBudget)((object[])state!)[0]).Cancel((Waiter)((object[])state)[1], token), new object[] { this, waiter });

            // Granted before the registration was stored: Complete disposed the empty one, so this
            // one is disposed here (twice is harmless).
            bool settled;
            lock (_lock)
            {
                settled = waiter.Node is null;
            }

            if (settled)
            {
                waiter.Registration.Dispose();
            }
        }

        return new ValueTask(waiter.Task);
    }

    /// <summary>Gives back bytes of a buffer that was freed (or never allocated) after <see cref="TakeAsync"/> or <see cref="Unkeep"/>.</summary>
    public void Return(long bytes)
    {
        if (bytes == 0)
        {
            return;
        }

        List<Waiter>? granted;
        lock (_lock)
        {
            _inUse -= bytes;
            granted = GrantLocked();
        }

        Complete(granted);
    }

    /// <summary>
    /// A request is done with a buffer of <paramref name="bytes"/> that an idle slot would keep:
    /// true when it may (it now counts as kept), false when it must be freed and returned (too
    /// much is kept already, or a taker waits for memory).
    /// </summary>
    public bool TryKeep(long bytes)
    {
        List<Waiter>? granted;
        lock (_lock)
        {
            if (_waiters.Count > 0 || _kept + bytes > KeepCapacity)
            {
                return false;
            }

            _inUse -= bytes;
            Interlocked.Add(ref _kept, bytes);
            granted = GrantLocked();
        }

        Complete(granted);
        return true;
    }

    /// <summary>A slot with a kept buffer of <paramref name="bytes"/> starts a request: the buffer counts as in use.</summary>
    public void Unkeep(long bytes)
    {
        if (bytes == 0)
        {
            return;
        }

        lock (_lock)
        {
            Interlocked.Add(ref _kept, -bytes);
            _inUse += bytes;
        }
    }

    /// <summary>A kept buffer of <paramref name="bytes"/> was freed (its connection closed).</summary>
    public void DropKept(long bytes) => Interlocked.Add(ref _kept, -bytes);

    // Nothing in use always fits, so a lone request never waits for itself.
    private bool Fits(long bytes) => _inUse == 0 || _inUse + bytes <= Capacity;

    private List<Waiter>? GrantLocked()
    {
        List<Waiter>? granted = null;
        while (_waiters.First is { } first && Fits(first.Value.Bytes))
        {
            _waiters.RemoveFirst();
            first.Value.Node = null;
            _inUse += first.Value.Bytes;
            (granted ??= []).Add(first.Value);
        }

        return granted;
    }

    private static void Complete(List<Waiter>? granted)
    {
        if (granted is null)
        {
            return;
        }

        foreach (var waiter in granted)
        {
            waiter.Registration.Dispose();
            waiter.TrySetResult();
        }
    }

    private void Cancel(Waiter waiter, CancellationToken token)
    {
        List<Waiter>? granted;
        lock (_lock)
        {
            if (waiter.Node is not { } node)
            {
                return; // granted already: the taker holds the bytes and gives them back as usual
            }

            _waiters.Remove(node);
            waiter.Node = null;

            // A large taker at the head may have held smaller ones back.
            granted = GrantLocked();
        }

        waiter.TrySetCanceled(token);
        Complete(granted);
    }

    private sealed class Waiter(long bytes) : TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
    {
        public long Bytes { get; } = bytes;

        public LinkedListNode<Waiter>? Node { get; set; }

        public CancellationTokenRegistration Registration { get; set; }
    }
}
