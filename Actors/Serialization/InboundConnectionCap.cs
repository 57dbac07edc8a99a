using Akka.Actor;
using Akka.Configuration;
using Akka.Event;
using Akka.Remote.Transport;
using Google.Protobuf;

namespace ActorBlk.Actors.Serialization;

/// <summary>
/// Akka.Remote's TCP transport (DotNetty) with a cap on the connections the remoting port holds
/// that this node did not open (README, "Security"). Akka's transport accepts every connection and
/// holds it, with a descriptor and up to a frame of buffer, until the association handshake times
/// out, so a peer that only connects could exhaust the process's descriptors (a node under
/// <c>ulimit -n 400</c> aborted) or its memory (10,000 half-sent frames took 1.5 GB). Past
/// <c>actorblk.remote.max-inbound-connections</c> in all, or <c>max-inbound-connections-per-host</c>
/// from one address, a new connection is closed as it arrives, before anything is read from it.
/// The library's defaults select it as <c>akka.remote.dot-netty.tcp.transport-class</c>; it wraps
/// Akka's own TCP transport (TLS included) and keeps its scheme, so addresses do not change.
/// </summary>
public sealed class InboundConnectionCap : Transport
{
    private const string InnerTransport = "Akka.Remote.Transport.DotNetty.TcpTransport, Akka.Remote";

    private readonly Transport _inner;
    private readonly ILoggingAdapter _log;
    private readonly Dictionary<string, int> _perHost = new(StringComparer.Ordinal);
    private readonly Lock _lock = new();
    private int _total;
    private long _refused;
    private long _lastLogged;

    /// <summary>Akka.Remote makes it from <c>transport-class</c>, with the transport's configuration.</summary>
    /// <param name="system">The actor system.</param>
    /// <param name="config">The transport's section (<c>akka.remote.dot-netty.tcp</c>).</param>
    public InboundConnectionCap(ActorSystem system, Config config)
    {
        ArgumentNullException.ThrowIfNull(system);
        var type = Type.GetType(InnerTransport, throwOnError: true)!;
        _inner = (Transport)Activator.CreateInstance(type, system, config)!;
        _log = Logging.GetLogger(system, typeof(InboundConnectionCap));
        (MaxTotal, MaxPerHost) = Limits(system.Settings.Config, ActorBlk.Hardware.Interop.LibC.OpenFileLimit());
        System = system;
        Config = config;
        BySystem.AddOrUpdate(system, this);
    }

    // The cap of each actor system of the process (specs look at its counts).
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<ActorSystem, InboundConnectionCap> BySystem = new();

    /// <summary>The cap applied to <paramref name="system"/>'s remoting, if any.</summary>
    internal static InboundConnectionCap? Of(ActorSystem system) => BySystem.TryGetValue(system, out var cap) ? cap : null;

    /// <summary>The cap over all hosts.</summary>
    public int MaxTotal { get; }

    /// <summary>The cap for one remote address.</summary>
    public int MaxPerHost { get; }

    /// <summary>Inbound connections held now.</summary>
    public int Held
    {
        get
        {
            lock (_lock)
            {
                return _total;
            }
        }
    }

    /// <summary>Connections closed as they arrived, past a cap.</summary>
    public long Refused => Interlocked.Read(ref _refused);

    /// <summary>
    /// The caps <paramref name="config"/> sets; the total is lowered to half of the descriptors
    /// left under <paramref name="openFileLimit"/> after the NBD server's reserve (64), so that the
    /// connections alone cannot take the last descriptors the node needs.
    /// </summary>
    /// <exception cref="ConfigurationException">A cap is not a positive number.</exception>
    public static (int Total, int PerHost) Limits(Config config, long openFileLimit)
    {
        var actorblk = config.GetConfig("actorblk") ?? Config.Empty;
        var total = ActorBlkSettings.Int(actorblk, "remote.max-inbound-connections", 1024);
        var perHost = ActorBlkSettings.Int(actorblk, "remote.max-inbound-connections-per-host", 256);
        if (total < 1)
        {
            throw new ConfigurationException($"actorblk.remote.max-inbound-connections: {total} is not a positive number.");
        }

        if (perHost < 1)
        {
            throw new ConfigurationException($"actorblk.remote.max-inbound-connections-per-host: {perHost} is not a positive number.");
        }

        var byLimit = Math.Max(8, (Math.Min(openFileLimit, int.MaxValue) - 64) / 2);
        total = (int)Math.Min(total, byLimit);
        return (total, Math.Min(perHost, total));
    }

    /// <inheritdoc />
    public override string SchemeIdentifier
    {
        get => _inner.SchemeIdentifier;
        protected set { }
    }

    /// <inheritdoc />
    public override long MaximumPayloadBytes
    {
        get => _inner.MaximumPayloadBytes;
        protected set { }
    }

    /// <inheritdoc />
    public override bool IsResponsibleFor(Address remote) => _inner.IsResponsibleFor(remote);

    /// <inheritdoc />
    public override Task<AssociationHandle> Associate(Address remoteAddress) => _inner.Associate(remoteAddress);

    /// <inheritdoc />
    public override Task<bool> Shutdown() => _inner.Shutdown();

    /// <inheritdoc />
    public override Task<bool> ManagementCommand(object message) => _inner.ManagementCommand(message);

    /// <inheritdoc />
    public override async Task<(Address, TaskCompletionSource<IAssociationEventListener>)> Listen()
    {
        var (address, inner) = await _inner.Listen().ConfigureAwait(false);
        var upstream = new TaskCompletionSource<IAssociationEventListener>(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = upstream.Task.ContinueWith(
            t =>
            {
                if (t.IsCompletedSuccessfully)
                {
                    inner.TrySetResult(new Listener(this, t.Result));
                }
                else if (t.Exception is { } ex)
                {
                    inner.TrySetException(ex.InnerExceptions);
                }
                else
                {
                    inner.TrySetCanceled();
                }
            },
            CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        return (address, upstream);
    }

    // Counts the connection in, or says why not.
    private string? TryAdmit(string host)
    {
        lock (_lock)
        {
            if (_total >= MaxTotal)
            {
                return $"{_total} inbound connections are held (actorblk.remote.max-inbound-connections = {MaxTotal})";
            }

            _perHost.TryGetValue(host, out var fromHost);
            if (fromHost >= MaxPerHost)
            {
                return $"{fromHost} inbound connections from {host} are held (actorblk.remote.max-inbound-connections-per-host = {MaxPerHost})";
            }

            _perHost[host] = fromHost + 1;
            _total++;
            return null;
        }
    }

    private void Release(string host)
    {
        lock (_lock)
        {
            _total--;
            if (_perHost.TryGetValue(host, out var fromHost) && fromHost > 1)
            {
                _perHost[host] = fromHost - 1;
            }
            else
            {
                _perHost.Remove(host);
            }
        }
    }

    private void Refuse(AssociationHandle handle, string reason)
    {
        var refused = Interlocked.Increment(ref _refused);
        if (ActorBlk.Hardware.LogLimit.FirstOrAMinuteOn(refused, ref _lastLogged))
        {
            _log.Warning("Remoting: closed a connection from {0} as it arrived: {1}; {2} refused so far (at most one such line a minute)",
                handle.RemoteAddress, reason, refused);
        }

        handle.Disassociate(reason, _log);
    }

    private sealed class Listener(InboundConnectionCap cap, IAssociationEventListener upstream) : IAssociationEventListener
    {
        public void Notify(IAssociationEvent ev)
        {
            if (ev is not InboundAssociation inbound)
            {
                upstream.Notify(ev);
                return;
            }

            var handle = inbound.Association;
            var host = handle.RemoteAddress.Host ?? string.Empty;
            if (cap.TryAdmit(host) is { } reason)
            {
                cap.Refuse(handle, reason);
                return;
            }

            upstream.Notify(new InboundAssociation(new CountedHandle(handle, () => cap.Release(host))));
        }
    }

    // The accepted connection's handle, given back to the count once: when the transport reports
    // it closed, or when the layer above closes it.
    private sealed class CountedHandle : AssociationHandle
    {
        private readonly AssociationHandle _inner;
        private Action? _release;

        public CountedHandle(AssociationHandle inner, Action release)
            : base(inner.LocalAddress, inner.RemoteAddress)
        {
            _inner = inner;
            _release = release;
            _ = ReadHandlerSource.Task.ContinueWith(
                t =>
                {
                    if (t.IsCompletedSuccessfully)
                    {
                        inner.ReadHandlerSource.TrySetResult(new ReadListener(this, t.Result));
                    }
                    else
                    {
                        Release();
                        inner.ReadHandlerSource.TrySetCanceled();
                    }
                },
                CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }

        public override bool Write(ByteString payload) => _inner.Write(payload);

#pragma warning disable CS0618, CS0672 // the transport's contract: the obsolete overload is the one to implement
        public override void Disassociate()
        {
            Release();
            _inner.Disassociate();
        }
#pragma warning restore CS0618, CS0672

        public void Release() => Interlocked.Exchange(ref _release, null)?.Invoke();

        public override bool Equals(object? obj) => obj is CountedHandle other && other._inner.Equals(_inner);

        public override int GetHashCode() => _inner.GetHashCode();

        public override string ToString() => _inner.ToString() ?? string.Empty;
    }

    private sealed class ReadListener(CountedHandle handle, IHandleEventListener upstream) : IHandleEventListener
    {
        public void Notify(IHandleEvent ev)
        {
            if (ev is Disassociated)
            {
                handle.Release();
            }

            upstream.Notify(ev);
        }
    }
}
