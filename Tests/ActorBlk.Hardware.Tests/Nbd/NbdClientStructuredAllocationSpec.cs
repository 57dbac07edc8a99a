using System.Net;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Nbd;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Tests.Devices;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;
using static ActorBlk.Testing.AllocationMeter;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// An NBD client device over our own server, with structured replies negotiated: reads (their
/// data in OFFSET_DATA chunks) and writes (answered by NONE chunks) allocate nothing per I/O in
/// steady state, client and server together, as the simple-reply path did. The receiver's chunk
/// parsing is a chain of ValueTask methods whose suspensions use pooled state machines.
/// </summary>
[Collection(AllocationCollection.Name)]
public sealed class NbdClientStructuredAllocationSpec
{
    private const int Ios = 5000;

    [Fact]
    public async Task Structured_reads_and_writes_allocate_nothing_per_io()
    {
        await using var devices = new RingDevices(2);
        var memory = devices.Create(new DeviceOptions { Name = "m0", Size = 64 << 20, MemoryBacked = true }, CpuTopology.Simulated(2));
        await using var server = NbdServer.Start(new NbdDeviceList([memory]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) });
        var remote = devices.Create(new DeviceOptions { Name = "r0", Driver = "nbd", Uri = server.ExportUri("m0") }, CpuTopology.Simulated(2));
        Assert.True(((NbdClientDriver)remote.Queue.Driver).Connections.Single().Structured);

        // Warm-up: JIT tiers, pools, the slots' buffers.
        await RunIos(remote, 4 * Ios);

        // Doubling the I/O count must not double what is allocated (see ZeroAllocationSpec).
        var once = await LeastOf(3, () => Measure(remote, Ios));
        var twice = await LeastOf(3, () => Measure(remote, 2 * Ios));
        Assert.True(twice - once < 16 * 1024, $"{once} bytes for {Ios} I/Os but {twice} for {2 * Ios}");
    }
}
