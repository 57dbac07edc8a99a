using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Drivers.Nbd;
using ActorBlk.Hardware.Queues;

namespace ActorBlk.Hardware.Nbd;

/// <summary>
/// NBD instruments on the <c>ActorBlk</c> meter (<see cref="BlockMetrics.Meter"/>): the
/// connections of every running <see cref="NbdServer"/> (tag <c>endpoint</c>) and of every
/// <see cref="NbdClientDriver"/> (tag <c>device</c>).
/// </summary>
/// <remarks>
/// All are observable: they are read when a listener collects, so neither side pays anything per
/// request. A server is observed from its start to its disposal, a client driver from its
/// construction to its disposal.
/// </remarks>
public static class NbdMetrics
{
    private static readonly ConditionalWeakTable<NbdServer, string> Servers = new();
    private static readonly ConditionalWeakTable<NbdClientDriver, string> Clients = new();

    static NbdMetrics()
    {
        var meter = BlockMetrics.Meter;
        meter.CreateObservableUpDownCounter("actorblk.nbd.server.connections", () => PerServer(s => s.ConnectionCount), "{connection}", "NBD connections open on the export server, by listening endpoint.");
        meter.CreateObservableCounter("actorblk.nbd.server.accepted", () => PerServer(s => s.AcceptedConnections), "{connection}", "NBD connections accepted since the server started.");
        meter.CreateObservableCounter("actorblk.nbd.server.refused", () => PerServer(s => s.RefusedConnections), "{connection}", "NBD connections closed at accept because the connection limit was reached.");
        meter.CreateObservableUpDownCounter("actorblk.nbd.server.in_flight", () => PerServer(s => s.InFlight), "{request}", "NBD requests in the block layer over all of the server's connections.");
        meter.CreateObservableUpDownCounter("actorblk.nbd.server.buffer_memory", () => PerServer(s => s.BufferBytesInUse + s.BufferBytesKept), "By", "Payload memory of the server's connections: buffers of requests in flight and buffers kept by idle slots.");
        meter.CreateObservableCounter("actorblk.nbd.server.buffer_waits", () => PerServer(s => s.BufferWaits), "{request}", "NBD requests that waited for payload memory (max-buffer-memory) since the server started.");
        meter.CreateObservableUpDownCounter("actorblk.nbd.client.connections", PerClient, "{connection}", "Live connections of an NBD client device to its server, by device.");
    }

    internal static void Add(NbdServer server) => Servers.AddOrUpdate(server, server.Address);

    internal static void Remove(NbdServer server) => Servers.Remove(server);

    internal static void Add(NbdClientDriver driver, string device) => Clients.AddOrUpdate(driver, device);

    internal static void Remove(NbdClientDriver driver) => Clients.Remove(driver);

    private static IEnumerable<Measurement<long>> PerServer(Func<NbdServer, long> value)
    {
        foreach (var (server, endpoint) in Servers)
        {
            yield return new Measurement<long>(value(server), new KeyValuePair<string, object?>("endpoint", endpoint));
        }
    }

    private static IEnumerable<Measurement<long>> PerClient()
    {
        foreach (var (driver, device) in Clients)
        {
            yield return new Measurement<long>(driver.LiveConnections, new KeyValuePair<string, object?>("device", device));
        }
    }
}
