using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers.Nbd;

/// <summary>Settings of the NBD client driver.</summary>
public sealed record NbdClientOptions
{
    /// <summary>The export (<c>uri</c>).</summary>
    public required NbdUri Uri { get; init; }

    /// <summary>Connections, one per hardware queue (<c>connections</c>).</summary>
    public int Connections { get; init; } = 1;

    /// <summary>
    /// For <c>nbds://</c>: a PEM file of the certificate authorities (or the server certificate
    /// itself) the server's certificate must chain to (<c>tls_ca</c>). Null: the system's trust store.
    /// </summary>
    public string? TlsCa { get; init; }

    /// <summary>
    /// For <c>nbds://</c>: verify the server certificate and its name (<c>tls_verify</c>, on by
    /// default). Off accepts any certificate, which is insecure: only for self-signed test setups.
    /// </summary>
    public bool TlsVerify { get; init; } = true;

    /// <summary>
    /// How long connecting and negotiating may take. Over a Unix socket whose listener has its
    /// backlog full (connect fails with EAGAIN) the connect is tried again until then.
    /// </summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>For specs: called each time a connect to a Unix socket found its backlog full (EAGAIN), before the wait to try again.</summary>
    internal Action? BacklogFullHook { get; init; }

    /// <summary>Whether the server's certificate is verified: <see cref="TlsVerify"/>, unless the URI's <c>tls-verify-peer=0</c> turns it off.</summary>
    public bool VerifiesPeer => TlsVerify && Uri.TlsVerifyPeer != false;

    /// <summary>The PEM file of trust anchors: <see cref="TlsCa"/>, else <c>ca-cert.pem</c> in the URI's <c>tls-certificates</c> directory, else null (the system trust store).</summary>
    public string? TrustAnchors => TlsCa ?? (Uri.TlsCertificates is { } directory ? Path.Combine(directory, "ca-cert.pem") : null);

    /// <summary>Where <see cref="TrustAnchors"/> comes from, for messages.</summary>
    internal string TrustAnchorsSource =>
        TlsCa is not null ? $"tls_ca '{TlsCa}'" : TrustAnchors is { } file ? $"'{file}' (tls-certificates)" : "the system trust store";
}

/// <summary>
/// A device that lives on an NBD server (<c>driver = nbd</c>), the way Linux's nbd driver sits
/// under blk-mq: one connection per hardware queue, the tag depth as each connection's in-flight
/// limit, and the block layer's timeouts and supervision around it. A lost connection is reported
/// as a device that is gone: supervision reconnects with back-off (<see cref="Reopen"/>) and the
/// requests that were in flight are retried by the retry rule, or the device goes offline and
/// every request fails with <see cref="BlockStatus.Offline"/>. An <c>NBD_ESHUTDOWN</c> reply (the
/// server is shutting down) takes the same path after a soft disconnect: the connection takes no
/// new request, lets the outstanding ones finish, sends <c>NBD_CMD_DISC</c> and is reported lost;
/// the request refused with ESHUTDOWN is not failed but retried after the reconnect.
/// Structured replies and the <c>base:allocation</c> metadata context are negotiated where the
/// server offers them: the device's allocation map (<see cref="GetExtentAsync"/>) is then the
/// server's, asked with <c>NBD_CMD_BLOCK_STATUS</c>.
/// </summary>
public sealed class NbdClientDriver : IBlockDriver, IAllocationMap
{
    private readonly NbdClientOptions _options;
    private readonly NbdClientConnection?[] _connections;
    private readonly Lock _lock = new();
    private readonly Dictionary<int, HardwareContext> _hardwareContexts = [];
    private readonly ulong _size;
    private readonly NbdTransmissionFlags _flags;
    // The device's identity as the server last named it: set at open, and by a reconnect (under
    // _lock) to a restarted server or to one that names it where the first did not.
    private (ulong Seq, string Boot)? _identity;
    // The boot id the server named at open (null: it named none).
    private readonly string? _openedBoot;
    private Retirement? _retired;

    // Cancelled when the device is removed (CancelRecovery), retired or disposed: a reconnect in
    // progress gives up at once instead of waiting out its connect timeout.
    private readonly CancellationTokenSource _recovery = new();

    /// <summary>Connects every connection and negotiates the export.</summary>
    /// <exception cref="IOException">The server cannot be reached or refuses the export.</exception>
    public NbdClientDriver(NbdClientOptions options, string deviceName)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options;
        _connections = new NbdClientConnection?[options.Connections];
        try
        {
            for (var i = 0; i < _connections.Length; i++)
            {
                try
                {
                    _connections[i] = NbdClientConnection.Connect(options);
                }
                catch (IOException ex) when (i > 0 && ex is not NbdTlsException and not NbdClientProtocolException)
                {
                    // The first connection was taken: name the one refused (a server limiting its
                    // clients, nbdkit --filter=limit, closes the second at once).
                    throw new IOException($"{ex.Message} (connection {i + 1} of {_connections.Length}; the first {i} opened)", ex);
                }

                if (i == 0 && _connections.Length > 1 && (_connections[0]!.Flags & NbdTransmissionFlags.CanMultiConn) == 0)
                {
                    // Before the second connection: a server that takes one client at a time
                    // (qemu-nbd --shared=1) leaves it unanswered, and the open failed on its
                    // negotiation timeout instead of saying why.
                    throw new IOException($"{deviceName}: {options.Uri} does not allow several connections (no NBD_FLAG_CAN_MULTI_CONN); use connections = 1.");
                }
            }
        }
        catch
        {
            Dispose();
            throw;
        }

        var first = _connections[0]!;
        _size = first.Size;
        _flags = first.Flags;
        _identity = Identity(first);
        _openedBoot = _identity?.Boot;
        if (_connections.Skip(1).FirstOrDefault(c => Identity(c!) != _identity) is { } other)
        {
            Dispose();
            throw new IOException($"{deviceName}: {options.Uri} is another device on another connection ({Format(_identity)} on the first, {Format(Identity(other))} on a later one): it was created again while the connections opened.");
        }

        // The server's minimum block size is a MUST for the client (NBD_INFO_BLOCK_SIZE): above
        // 4096, the largest logical block size here, no request could honour it.
        if (first.MinimumBlock > 4096)
        {
            Dispose();
            throw new IOException($"{deviceName}: {options.Uri} needs requests aligned to {first.MinimumBlock} bytes (its minimum block size); " +
                "ActorBlk's logical block size is at most 4096.");
        }

        var lbs = (int)Math.Clamp(System.Numerics.BitOperations.RoundUpToPowerOf2(Math.Max(first.MinimumBlock, 512)), 512, 4096);

        // A byte offset is a long here, as a loff_t in Linux, whose nbd driver refuses such a size
        // (nbd_set_size: EINVAL): a server's 2^63 + 4096 opened a device of -9223372036854771712 bytes.
        if (_size > long.MaxValue)
        {
            Dispose();
            throw new IOException($"{deviceName}: {options.Uri} has a size of {_size} bytes, beyond the {long.MaxValue} a device can address.");
        }

        // Not one logical block per request: the queue's limits could not be built, and its
        // ArgumentOutOfRangeException reached the user with a stack trace (an outside audit).
        if (first.MaximumPayload < lbs)
        {
            Dispose();
            throw new IOException($"{deviceName}: {options.Uri} has a maximum block size of {first.MaximumPayload} bytes, below the device's logical block size of {lbs} bytes.");
        }

        // Whole logical blocks, as the kernel rounds max_hw_sectors down to the logical block size
        // (blk_validate_limits): a server's maximum of 100,000 bytes with 4096-byte blocks read
        // 97 in max_hw_sectors_kb, where Linux shows 96 (an outside audit with nbdkit's
        // blocksize-policy filter; requests were split at 96 KiB all the same).
        var maxSectors = ((int)Math.Min(Math.Min(first.MaximumPayload, 32u << 20), int.MaxValue) >> Bio.SectorShift) & ~((lbs >> Bio.SectorShift) - 1);
        var trim = (_flags & NbdTransmissionFlags.SendTrim) != 0;
        var zeroes = (_flags & NbdTransmissionFlags.SendWriteZeroes) != 0;
        Limits = new QueueLimits
        {
            LogicalBlockSize = lbs,
            PhysicalBlockSize = lbs,
            CapacitySectors = (long)(_size >> Bio.SectorShift) & ~((lbs >> Bio.SectorShift) - 1L),
            MaxHardwareSectors = maxSectors,
            MaxSectors = Math.Min(maxSectors, QueueLimits.DefaultMaxSectors),
            // Discards and zeroes carry no payload; a 32-bit NBD length bounds them.
            MaxDiscardSectors = trim ? (int)((uint.MaxValue & ~(uint)(lbs - 1)) >> Bio.SectorShift) : 0,
            MaxWriteZeroesSectors = zeroes ? (int)((uint.MaxValue & ~(uint)(lbs - 1)) >> Bio.SectorShift) : 0,
            VolatileWriteCache = (_flags & NbdTransmissionFlags.SendFlush) != 0,
            Fua = (_flags & NbdTransmissionFlags.SendFua) != 0,
            // Only the server knows whether its zeroing is fast; it says so with SEND_FAST_ZERO.
            FastWriteZeroes = (_flags & NbdTransmissionFlags.SendFastZero) != 0,
        };
        NbdMetrics.Add(this, deviceName);
    }

    /// <summary>Connections that are open and not found dead (<c>actorblk.nbd.client.connections</c>).</summary>
    public int LiveConnections
    {
        get
        {
            var live = 0;
            foreach (var connection in _connections)
            {
                if (connection is { IsDead: false })
                {
                    live++;
                }
            }

            return live;
        }
    }

    /// <inheritdoc />
    public string Kind => "nbd";

    /// <inheritdoc />
    public string Description => $"nbd client of {_options.Uri}, {_connections.Length} connection(s), flags {_flags}";

    /// <inheritdoc />
    public QueueLimits Limits { get; }

    /// <summary>The server exports the device read-only (<c>NBD_FLAG_READ_ONLY</c>): the queue is read-only too.</summary>
    public bool ReadOnly => (_flags & NbdTransmissionFlags.ReadOnly) != 0;

    /// <inheritdoc />
    /// <remarks>
    /// A retired driver (<see cref="Retire(string)"/>) is no longer reopenable: losing it takes the device
    /// offline. Hardware queues are set up when the queue starts
    /// (<see cref="DriverFeatures.EagerHardwareContexts"/>): a connection's receiver runs from then
    /// on, so a server that closes an idle connection (its device destroyed) is noticed at once,
    /// not at the first request (an outside audit).
    /// </remarks>
    public DriverFeatures Features => Volatile.Read(ref _retired) is null
        ? DriverFeatures.Resettable | DriverFeatures.Reopenable | DriverFeatures.EagerHardwareContexts
        : DriverFeatures.Resettable | DriverFeatures.EagerHardwareContexts;

    /// <summary>
    /// The disk sequence number of the device the server last named (at open, or at the latest
    /// reconnect; <see cref="DiskSequence"/>), or 0 when it named none (not an ActorBlk server) or
    /// when a reconnect reached another server process than the open did (another boot id: the
    /// numbers of two processes cannot be compared).
    /// </summary>
    internal ulong ServerDiskSeq
    {
        get
        {
            lock (_lock)
            {
                return _identity is var (seq, boot) && boot == _openedBoot ? seq : 0;
            }
        }
    }

    /// <summary>True while every connection is open (none lost, none being reconnected).</summary>
    internal bool Connected
    {
        get
        {
            for (var i = 0; i < _connections.Length; i++)
            {
                if (Volatile.Read(ref _connections[i]) is not { IsDead: false, IsClosing: false })
                {
                    return false;
                }
            }

            return true;
        }
    }

    /// <summary>Why the driver was retired, or null while it serves.</summary>
    public string? RetiredReason => Volatile.Read(ref _retired)?.Reason;

    /// <inheritdoc />
    public string? PlannedLoss => Volatile.Read(ref _retired) is { Planned: true } retirement ? retirement.Reason : null;

    /// <summary>
    /// Gives the server up for good (its node left the cluster, or the export went away): every
    /// connection is closed, which reports the device gone, and since a retired driver cannot be
    /// reopened, supervision takes the device offline at once: the requests in flight (a write
    /// among them has an unknown outcome) and every later one fail with
    /// <see cref="BlockStatus.Offline"/>. Idempotent; the first reason is kept.
    /// </summary>
    /// <param name="reason">Why, for the log and the errors.</param>
    public void Retire(string reason) => Retire(reason, planned: false);

    /// <summary>
    /// <see cref="Retire(string)"/>, saying whether the loss is an expected event (the export's
    /// owner destroyed or moved it: <see cref="PlannedLoss"/>, logged as a warning) or a failure
    /// (its node is unreachable: an error).
    /// </summary>
    /// <param name="reason">Why, for the log and the errors.</param>
    /// <param name="planned">True when the owner gave the export up on purpose.</param>
    public void Retire(string reason, bool planned)
    {
        ArgumentException.ThrowIfNullOrEmpty(reason);
        if (Interlocked.CompareExchange(ref _retired, new Retirement(reason, planned), null) is not null)
        {
            return;
        }

        // First, or the lock below would wait for a reconnect in progress (its connect timeout).
        _recovery.Cancel();
        lock (_lock)
        {
            foreach (var connection in _connections)
            {
                connection?.Kill($"the client gave the server up: {reason}");
            }
        }
    }

    /// <summary>How long a block status question waits for the server's answer before the map says it cannot tell.</summary>
    public static readonly TimeSpan BlockStatusTimeout = TimeSpan.FromSeconds(30);

    /// <summary>The server answers block status (<c>base:allocation</c> was negotiated on the first connection).</summary>
    public bool HasAllocationMap => Volatile.Read(ref _connections[0]) is { AllocationContext: not null };

    /// <summary>
    /// Always false ("cannot tell": every byte counts as data): the map is the server's, and a
    /// synchronous caller must not wait on the network. <see cref="GetExtentAsync"/> asks it.
    /// </summary>
    /// <inheritdoc />
    public bool TryGetExtent(long offset, long maxLength, out long length, out bool allocated)
    {
        IAllocationMap.CheckRange(offset, maxLength, Limits.CapacityBytes);
        (length, allocated) = (0, true);
        return false;
    }

    /// <summary>
    /// Asks the server the <c>base:allocation</c> state of the extent at <paramref name="offset"/>
    /// with <c>NBD_CMD_BLOCK_STATUS</c> (<c>NBD_CMD_FLAG_REQ_ONE</c>) on a live connection,
    /// without blocking a thread. Null (cannot tell) when the server has no such context, no
    /// connection is up (a reconnect in progress), or no valid answer came within
    /// <see cref="BlockStatusTimeout"/>. A hole is an extent the server reports as both
    /// <c>NBD_STATE_HOLE</c> and <c>NBD_STATE_ZERO</c>.
    /// </summary>
    /// <inheritdoc />
    public async ValueTask<AllocationExtent?> GetExtentAsync(long offset, long maxLength, CancellationToken cancellationToken = default)
    {
        IAllocationMap.CheckRange(offset, maxLength, Limits.CapacityBytes);
        NbdClientConnection? connection = null;
        for (var i = 0; i < _connections.Length && connection is null; i++)
        {
            if (Volatile.Read(ref _connections[i]) is { IsDead: false, IsClosing: false, AllocationContext: not null } live)
            {
                connection = live;
            }
        }

        if (connection is null)
        {
            return null;
        }

        // A 32-bit length, whole logical blocks where the range allows (the server's minimum block size).
        var lbs = (long)Limits.LogicalBlockSize;
        var length = Math.Min(maxLength, uint.MaxValue & ~(lbs - 1));
        var extent = await connection.GetExtentAsync(offset, (uint)length, BlockStatusTimeout, cancellationToken).ConfigureAwait(false);
        return extent is { Length: > 0 } answer ? answer with { Length = Math.Min(answer.Length, maxLength) } : null;
    }

    /// <summary>The live connections, for specs.</summary>
    internal IEnumerable<NbdClientConnection> Connections => _connections.OfType<NbdClientConnection>();

    /// <inheritdoc />
    public void InitHardwareContext(HardwareContext hctx)
    {
        ArgumentNullException.ThrowIfNull(hctx);
        lock (_lock)
        {
            _hardwareContexts[hctx.Index] = hctx;
            _connections[hctx.Index % _connections.Length]?.Start(hctx);
        }
    }

    /// <inheritdoc />
    public BlockStatus QueueRq(HardwareContext hctx, Request request, bool last)
    {
        ArgumentNullException.ThrowIfNull(hctx);
        ArgumentNullException.ThrowIfNull(request);
        var connection = Volatile.Read(ref _connections[hctx.Index % _connections.Length]);
        if (connection is null || connection.IsDead)
        {
            throw new BlockDeviceErrorException($"{hctx}: the NBD connection to {_options.Uri} is down.", deviceGone: true);
        }

        NbdCommand command;
        switch (request.Op)
        {
            case BlockOp.Read:
                command = NbdCommand.Read;
                break;
            case BlockOp.Write:
                command = NbdCommand.Write;
                break;
            case BlockOp.Flush:
                command = NbdCommand.Flush;
                break;
            case BlockOp.Discard:
                command = NbdCommand.Trim;
                break;
            case BlockOp.WriteZeroes:
                command = NbdCommand.WriteZeroes;
                break;
            default:
                return BlockStatus.NotSupported;
        }

        var flags = (request.Flags & RequestFlags.Fua) != 0 && Limits.Fua && command != NbdCommand.Flush && command != NbdCommand.Read
            ? NbdCommandFlags.Fua
            : NbdCommandFlags.None;
        if (command == NbdCommand.WriteZeroes && (request.Flags & RequestFlags.NoUnmap) != 0)
        {
            flags |= NbdCommandFlags.NoHole; // as Linux's nbd driver sends REQ_NOUNMAP
        }

        if (command == NbdCommand.WriteZeroes && (request.Flags & RequestFlags.NoFallback) != 0)
        {
            if (!Limits.FastWriteZeroes)
            {
                // The server did not promise fast zeroes, so it may not be sent FAST_ZERO (proto.md).
                return BlockStatus.NotSupported;
            }

            flags |= NbdCommandFlags.FastZero;
        }

        // The flush sequence (blk-flush.c) for a device with a volatile cache, which the queue
        // leaves to the driver: a preflush goes out as NBD_CMD_FLUSH before the command, and a FUA
        // the server cannot take (it sends flush but not FUA) as a flush after it. Both were
        // dropped, so a journal's commit could reach the disk before the blocks it commits (a
        // review). The queue strips both flags when the device has no cache.
        var writes = command is NbdCommand.Write or NbdCommand.WriteZeroes or NbdCommand.Trim;
        var preFlush = writes && (request.Flags & RequestFlags.PreFlush) != 0 && Limits.VolatileWriteCache;
        var postFlush = writes && (request.Flags & RequestFlags.Fua) != 0 && !Limits.Fua && Limits.VolatileWriteCache;
        request.Start();
        if (!connection.TryEnqueue(request, command, flags, preFlush, postFlush))
        {
            if (connection.IsDead)
            {
                throw new BlockDeviceErrorException($"{hctx}: the NBD connection to {_options.Uri} is down.", deviceGone: true);
            }

            // The server is shutting down (NBD_ESHUTDOWN): the connection finishes what it has
            // outstanding and then disconnects and is reported lost. Until then the request waits
            // here (rerun after the resource delay); after it, the reconnect serves it.
            return BlockStatus.Resource;
        }

        if (last)
        {
            connection.Push();
        }

        return BlockStatus.Ok;
    }

    /// <inheritdoc />
    public void CommitRqs(HardwareContext hctx)
    {
        ArgumentNullException.ThrowIfNull(hctx);
        Volatile.Read(ref _connections[hctx.Index % _connections.Length])?.Push();
    }

    /// <summary>
    /// A request's deadline passed: the connection it went out on is presumed dead (as Linux's nbd
    /// driver does) and is closed, which reports the device gone; supervision reconnects and the
    /// block layer retries the request.
    /// </summary>
    public TimeoutAction Timeout(Request request)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.Hctx is { } hctx)
        {
            // Killed first: once it returns, the receiver copies nothing more into a request the
            // branch below completes. Only the connection the request went out on, and still
            // waits on, is blamed: a request whose connection was lost stays in flight until the
            // reopen takes it back, and a scan that found it expired while the reopen installed a
            // fresh connection killed that healthy connection (an outside audit: nbdkit stopped
            // for longer than io_timeout; the reopen succeeded and the fresh connection was closed
            // 10 ms later "after a request timed out", one more loss and a reset).
            var connection = Volatile.Read(ref _connections[hctx.Index % _connections.Length]);
            var holds = connection is not null && connection.Holds(request);
            if (holds)
            {
                connection!.Kill($"the client closed it after a request timed out (io_timeout {request.Queue?.IoTimeoutMs ?? 0} ms)");
            }

            if ((connection is null || connection.IsDead) && (hctx.Queue.IsOffline || RetiredReason is not null))
            {
                // Its connection is gone and none will come back: a request that raced into the
                // dead connection after the queue had failed those in flight (going offline) would
                // otherwise wait for a reply that cannot come, its timer reset for ever. Fail it,
                // as nbd_xmit_timeout does once no socket is left.
                if (request.Queue is { } queue && queue.CompleteRequest(request, BlockStatus.Offline, request.Generation))
                {
                    return TimeoutAction.Done;
                }
            }
        }

        return TimeoutAction.ResetTimer;
    }

    /// <summary>Drops and re-opens every connection (dispatch is stopped; in-flight requests are the block layer's to retry).</summary>
    public void Reset() => Reconnect();

    /// <summary>Reconnects; throws (device still gone) while the server cannot be reached.</summary>
    /// <exception cref="BlockDeviceErrorException">The server is still unreachable.</exception>
    public void Reopen() => Reconnect();

    /// <inheritdoc />
    /// <remarks>A reconnect in progress (a reset or reopen) is cancelled: it throws as a device that is gone.</remarks>
    public void CancelRecovery() => _recovery.Cancel();

    /// <summary>
    /// The block layer is failing the requests in flight (teardown past its drain timeout, or the
    /// device offline): every connection is shut down and fenced, so once this returns no receiver
    /// copies a reply's data into them; a reply that arrives is dropped, and no loss is reported
    /// (the block layer is ending the device itself). Without it, a read's reply arriving then was
    /// copied into a buffer whose read had completed with Offline. Not under the lock a reconnect
    /// holds for its connect timeout: a reconnect closes every connection before it opens any, and
    /// one it opens holds no request.
    /// </summary>
    public void Abandon()
    {
        for (var i = 0; i < _connections.Length; i++)
        {
            Volatile.Read(ref _connections[i])?.Abandon("the block layer failed its requests in flight (the device is being removed past its drain timeout, or went offline)");
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        NbdMetrics.Remove(this);
        _recovery.Cancel();
        var closing = new List<NbdClientConnection>();
        lock (_lock)
        {
            for (var i = 0; i < _connections.Length; i++)
            {
                if (_connections[i] is { } connection)
                {
                    closing.Add(connection);
                }

                _connections[i] = null;
            }
        }

        // An orderly close sends NBD_CMD_DISC and does not wait for the server's own close.
        foreach (var connection in closing)
        {
            connection.Dispose();
        }
    }

    // The identity an ActorBlk server sends at the end of the export's description, or null.
    private static (ulong Seq, string Boot)? Identity(NbdClientConnection connection) =>
        DiskSequence.TryParseIdentity(connection.Description, out var seq, out var boot) ? (seq, boot) : null;

    private static string Format((ulong Seq, string Boot)? identity) =>
        identity is var (seq, boot) ? DiskSequence.Format(seq, boot) : "no identity";

    /// <summary>
    /// Why the export a reconnect reached is another device than the one opened, or null: the same
    /// server process (the same boot id) sends another sequence number, so the device was destroyed
    /// and another created under the export's name. A server that restarted (another boot id) may
    /// serve the same data again (a file device), as may one that sends no identity.
    /// </summary>
    private string? AnotherDevice(NbdClientConnection fresh) =>
        _identity is { } opened && Identity(fresh) is { } now && now.Boot == opened.Boot && now.Seq != opened.Seq
            ? $"is another device now ({Format(opened)} was opened, the export is {Format(now)}: it was destroyed and created again under its name)"
            : null;

    /// <summary>
    /// How the export a reconnect negotiated differs from the one the device was opened on in a way
    /// that breaks what the device advertised (its size, its read-only state, flush, FUA, trim,
    /// write-zeroes, multi-conn, its logical block size or maximum request size), or null when it
    /// can serve the device as it is. A capability the server gained is no difference: the device
    /// just does not use it.
    /// </summary>
    private string? Incompatibility(NbdClientConnection fresh)
    {
        if (fresh.Size != _size)
        {
            return $"changed size from {_size} to {fresh.Size} bytes";
        }

        if (!ReadOnly && (fresh.Flags & NbdTransmissionFlags.ReadOnly) != 0)
        {
            return "became read-only (NBD_FLAG_READ_ONLY)";
        }

        var advertised = _flags & (NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua | NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.SendFastZero);
        if (_connections.Length > 1)
        {
            advertised |= NbdTransmissionFlags.CanMultiConn;
        }

        var lost = advertised & ~fresh.Flags;
        if (lost != 0)
        {
            return $"no longer advertises {lost} (transmission flags were {_flags}, now {fresh.Flags})";
        }

        var lbs = (uint)Limits.LogicalBlockSize;
        if (fresh.MinimumBlock > lbs || lbs % Math.Max(fresh.MinimumBlock, 1u) != 0)
        {
            return $"now has a minimum block size of {fresh.MinimumBlock} bytes, which the device's logical block size of {lbs} bytes does not honour";
        }

        var largest = (long)Limits.MaxHardwareSectors << Bio.SectorShift;
        if (fresh.MaximumPayload < largest)
        {
            return $"now has a maximum block size of {fresh.MaximumPayload} bytes, below the device's largest request of {largest} bytes";
        }

        return null;
    }

    private void Reconnect()
    {
        if (RetiredReason is { } why)
        {
            throw new BlockDeviceErrorException($"{_options.Uri} was given up: {why}", deviceGone: true);
        }

        lock (_lock)
        {
            // Every connection is closed before any is opened: the block layer takes back the
            // requests of all of them after this, and a connection left open because a reconnect
            // before it failed (the device then goes offline) could still write a reply's data into
            // a request that had failed. A closed connection's receiver copies nothing more.
            for (var i = 0; i < _connections.Length; i++)
            {
                _connections[i]?.Close();
                Volatile.Write(ref _connections[i], null);
            }

            for (var i = 0; i < _connections.Length; i++)
            {
                NbdClientConnection fresh;
                try
                {
                    fresh = NbdClientConnection.Connect(_options, _recovery.Token);
                }
                catch (OperationCanceledException ex)
                {
                    throw new BlockDeviceErrorException($"reconnecting to {_options.Uri} was abandoned: {RetiredReason ?? "the device is being removed"}", deviceGone: true, ex);
                }
                catch (IOException ex)
                {
                    throw new BlockDeviceErrorException($"reconnecting to {_options.Uri}: {ex.Message}", deviceGone: true, ex);
                }

                if (AnotherDevice(fresh) is { } another)
                {
                    // No later attempt can find the device it opened: give it up now, so the queue
                    // goes offline at once rather than after the remaining back-off, and close the
                    // connections this reconnect already replaced (Lock is re-entrant).
                    fresh.Dispose();
                    // An error for whoever holds it open: its data is not there any more. (A
                    // cluster handle moves to the new device; the registry may retire the queue
                    // as planned first.)
                    Retire($"{_options.Uri} {another}");
                    throw new BlockDeviceErrorException($"{_options.Uri} {another}; refusing the reconnect and giving the device up.", deviceGone: true);
                }

                if (Incompatibility(fresh) is { } change)
                {
                    fresh.Dispose();
                    throw new BlockDeviceErrorException($"{_options.Uri} {change}; refusing the reconnect (the device keeps what it advertised at open).", deviceGone: true);
                }

                // A restarted server names the device anew: a later re-creation there is caught too.
                _identity = Identity(fresh) ?? _identity;
                Volatile.Write(ref _connections[i], fresh);
                if (_hardwareContexts.TryGetValue(i, out var hctx))
                {
                    fresh.Start(hctx);
                }
            }
        }
    }

    private sealed record Retirement(string Reason, bool Planned);
}
