using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using Akka.Actor;
using Akka.Configuration;
using Akka.Event;
using Akka.Remote.Transport;
using Akka.Remote.Transport.DotNetty;
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
/// With TLS (a <see cref="DotNettySslSetup"/>, as <see cref="ActorBlkRemoting.TlsSetup"/> gives),
/// each connection this node opens is first tried with a TLS handshake of its own, with the same
/// certificate and validation, and handed to Akka's transport only when that handshake succeeds:
/// Akka.Remote shuts the whole actor system down when its own handshake on a connection it opened
/// fails, so a member whose address something else had taken (a member restarted without TLS, any
/// process on its port) stopped every node that reconnected to it (README, "Security").
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
        var ssl = system.Settings.Setup.Get<DotNettySslSetup>();
        _tls = config.GetBoolean("enable-ssl", false) && ssl.HasValue ? ssl.Value : null;
        _tlsTimeout = config.GetTimeSpan("connection-timeout", TimeSpan.FromSeconds(15), allowInfinite: false);
        System = system;
        Config = config;
        BySystem.AddOrUpdate(system, this);
    }

    private readonly DotNettySslSetup? _tls;
    private readonly TimeSpan _tlsTimeout;
    private readonly TaskCompletionSource<string> _firstTlsFailure = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>
    /// Completes with the reason of the first connection this node opened whose TLS handshake
    /// failed (the peer does not speak TLS, or does not present a certificate this node accepts);
    /// never without TLS. A client that is joining stops at it rather than retry.
    /// </summary>
    public Task<string> FirstTlsFailure => _firstTlsFailure.Task;

    // The cap of each actor system of the process (specs look at its counts).
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<ActorSystem, InboundConnectionCap> BySystem = new();

    /// <summary>The cap applied to <paramref name="system"/>'s remoting, if any.</summary>
    /// <param name="system">An actor system whose remoting may use this transport.</param>
    public static InboundConnectionCap? Of(ActorSystem system) => BySystem.TryGetValue(system, out var cap) ? cap : null;

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
    public override async Task<AssociationHandle> Associate(Address remoteAddress)
    {
        ArgumentNullException.ThrowIfNull(remoteAddress);
        if (_tls is { } tls && remoteAddress.Host is { } host && remoteAddress.Port is { } port)
        {
            await TryTlsAsync(tls, remoteAddress, host, port).ConfigureAwait(false);
        }

        return await _inner.Associate(remoteAddress).ConfigureAwait(false);
    }

    // A TLS handshake with the peer, as Akka's transport would make it (the certificate, the same
    // validation); a failure is an association failure (Akka retries, gated, as for a refused
    // connection) instead of Akka's shutdown of the whole system. A connection that cannot be
    // made at all is left to Akka's transport, which reports it as ever.
    private async Task TryTlsAsync(DotNettySslSetup tls, Address remoteAddress, string host, int port)
    {
        using var deadline = new CancellationTokenSource(_tlsTimeout);
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(host, port, deadline.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is SocketException or OperationCanceledException)
        {
            return;
        }

        var validator = tls.CustomValidator ?? DefaultValidator(tls);
        var stream = new SslStream(new NetworkStream(socket, ownsSocket: false), leaveInnerStreamOpen: false);
        await using (stream.ConfigureAwait(false))
        {
            try
            {
                await stream.AuthenticateAsClientAsync(
                    new SslClientAuthenticationOptions
                    {
                        TargetHost = host,
                        ClientCertificates = tls.RequireMutualAuthentication ? [tls.Certificate] : null,
                        CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                        RemoteCertificateValidationCallback = (_, certificate, chain, errors) =>
                            validator(certificate as X509Certificate2 ?? (certificate is null ? null : X509CertificateLoader.LoadCertificate(certificate.GetRawCertData())), chain, remoteAddress.ToString(), errors, _log),
                    },
                    deadline.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is global::System.Security.Authentication.AuthenticationException or IOException or SocketException or OperationCanceledException)
            {
                var reason = $"TLS handshake with {host}:{port} failed ({(ex is OperationCanceledException ? $"no answer within {_tlsTimeout.TotalSeconds:0.#} s" : ex.GetBaseException().Message)}): "
                    + "the process listening there does not speak TLS or does not present a certificate this node accepts (README, \"Security\")";
                _firstTlsFailure.TrySetResult(reason);
                throw new InvalidAssociationException(reason);
            }

            try
            {
                await stream.ShutdownAsync().ConfigureAwait(false);
            }
            catch (IOException)
            {
                // The peer closed first: the handshake is what counted.
            }
        }
    }

    // Akka's own validation when the setup names none (DotNettyTransport.ComposeValidatorFromSettings).
    private CertificateValidationCallback DefaultValidator(DotNettySslSetup tls) => (tls.SuppressValidation, tls.ValidateCertificateHostname) switch
    {
        (true, true) => CertificateValidation.ValidateHostname(null, _log),
        (true, false) => static (_, _, _, _, _) => true,
        (false, true) => CertificateValidation.Combine(CertificateValidation.ValidateChain(_log), CertificateValidation.ValidateHostname(null, _log)),
        (false, false) => CertificateValidation.ValidateChain(_log),
    };

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
