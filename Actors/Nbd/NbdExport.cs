using System.Net;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Nbd;
using Akka;
using Akka.Actor;
using Akka.Event;

namespace ActorBlk.Actors.Nbd;

/// <summary>
/// The NBD export of a node: an actor that owns the <see cref="NbdServer"/> serving every device
/// of the <see cref="BlockLayer"/>. It stops the server (closing connections, letting their
/// requests complete) in coordinated shutdown's <c>service-unbind</c> phase, before the devices
/// are destroyed in <c>service-stop</c>.
/// </summary>
public static class NbdExport
{
    /// <summary>The actor's name under <c>/user</c>.</summary>
    public const string ActorName = "actorblk-nbd";

    /// <summary>Asks for the export's endpoint and export names.</summary>
    public sealed record GetExports : INoSerializationVerificationNeeded
    {
        /// <summary>The instance.</summary>
        public static readonly GetExports Instance = new();
    }

    /// <summary>The answer to <see cref="GetExports"/>.</summary>
    /// <param name="Endpoint">The bound endpoint: an <see cref="IPEndPoint"/> over TCP, a <see cref="System.Net.Sockets.UnixDomainSocketEndPoint"/> over a Unix socket (an abstract name with its leading NUL).</param>
    /// <param name="Names">The export names; the first is the default export.</param>
    /// <param name="Connections">Connections open now.</param>
    public sealed record Exports(EndPoint Endpoint, IReadOnlyList<string> Names, int Connections) : INoSerializationVerificationNeeded;

    /// <summary>
    /// Binds the server for <paramref name="layer"/>'s devices and starts the actor that owns it.
    /// Binding errors (port in use, a non-loopback address without TLS, a Unix socket another
    /// server listens on) throw here, to the caller (see <see cref="NbdServer.Start"/>).
    /// </summary>
    /// <returns>The actor and the bound endpoint.</returns>
    public static (IActorRef Actor, NbdServer Server) Start(BlockLayer layer, NbdServerOptions options)
    {
        ArgumentNullException.ThrowIfNull(layer);
        var log = Logging.GetLogger(layer.System, typeof(NbdExport));
        var server = NbdServer.Start(new BlockLayerCatalog(layer), options, line => log.Warning("{0}", line));
        var actor = layer.System.ActorOf(Props.Create(() => new NbdExportActor(server)), ActorName);

        // A destroyed device's connections close once its queue has drained, so their clients
        // learn it at once, idle or not (a client reconnecting then meets whatever the name serves).
        // Off the block layer's actor: a cancellation may run a connection's continuations inline.
        Action<BlockDevice> forgotten = device => Task.Run(() =>
        {
            if (server.CloseConnectionsOf(device) is > 0 and var closed)
            {
                log.Info("NBD export {0}: device destroyed; closed its {1} connection(s)", device.Name, closed);
            }
        });
        layer.DeviceForgotten += forgotten;
        CoordinatedShutdown.Get(layer.System).AddTask(CoordinatedShutdown.PhaseServiceUnbind, "actorblk-nbd-stop", async () =>
        {
            layer.DeviceForgotten -= forgotten;
            await server.DisposeAsync().ConfigureAwait(false);
            await actor.GracefulStop(TimeSpan.FromSeconds(30)).ConfigureAwait(false);
            return Done.Instance;
        });
        return (actor, server);
    }

    /// <summary>Every device of a block layer, in configuration order; the first is the default export.</summary>
    internal sealed class BlockLayerCatalog(BlockLayer layer) : INbdExportCatalog
    {
        public IReadOnlyList<IBlockDevice> Exports
        {
            get
            {
                var order = layer.Settings.Devices.Select(d => d.Name).Concat(layer.Settings.StackedDevices.Select(s => s.Name)).ToList();
                return layer.Devices
                    .Where(d => !layer.IsImported(d.Name))
                    .OrderBy(d => order.IndexOf(d.Name) is var i and >= 0 ? i : int.MaxValue)
                    .ThenBy(d => d.Name, StringComparer.Ordinal)
                    .ToList();
            }
        }

        public bool TryGetExport(string name, out IBlockDevice device)
        {
            if (name.Length > 0)
            {
                // Another node's device opened here is exported by its owner, not re-exported.
                var exported = layer.TryGetDevice(name, out var found) && !layer.IsImported(name);
                device = exported ? found! : null!;
                return exported;
            }

            device = Exports.FirstOrDefault()!;
            return device is not null;
        }
    }
}

/// <summary>Owns the running <see cref="NbdServer"/>; stopping the actor stops the server.</summary>
internal sealed class NbdExportActor : ReceiveActor
{
    private readonly NbdServer _server;
    private readonly ILoggingAdapter _log = Context.GetLogger();

    public NbdExportActor(NbdServer server)
    {
        _server = server;
        Receive<NbdExport.GetExports>(_ => Sender.Tell(new NbdExport.Exports(
            Endpoint(_server), _server.Catalog.Exports.Select(d => d.Name).ToList(), _server.ConnectionCount)));
    }

    protected override void PostStop()
    {
        // In coordinated shutdown the server is already stopped (and its requests completed) before
        // the actor; stopped any other way, the server stops in the background (disposal is idempotent).
        _ = _server.DisposeAsync().AsTask();
        _log.Info("NBD export on {0} stopped", _server.Address);
    }

    private static EndPoint Endpoint(NbdServer server) =>
        server.UnixSocket is { } socket
            ? new System.Net.Sockets.UnixDomainSocketEndPoint(socket[0] == '@' ? "\0" + socket[1..] : socket)
            : server.LocalEndPoint;
}
