using System.Net;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Nbd;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests.Nbd;

/// <summary>
/// A device whose driver is given up while supervision waits to reopen it (a cluster device whose
/// owner left the registry: <see cref="NbdClientDriver.Retire(string)"/>) goes offline at the next
/// attempt, and the requests that wait fail with Offline then, not after every remaining attempt.
/// </summary>
public sealed class NbdRetiredDeviceSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(60);

    // So many attempts that waiting them out would take minutes.
    private static readonly Config Patient = ConfigurationFactory.ParseString("""
        akka.loglevel = WARNING
        actorblk.topology { source = simulated, simulated.cpus = 2 }
        actorblk.supervision {
          reopen-backoff-min = 100ms
          reopen-backoff-max = 300ms
          reopen-attempts = 1000
          max-reopens = 5
        }
        """);

    public NbdRetiredDeviceSpec(ITestOutputHelper output)
        : base(Patient, output: output)
    {
    }

    [Fact]
    public async Task A_driver_retired_during_the_reopen_back_off_fails_the_waiting_requests_with_offline()
    {
        await using var devices = new RingDevices(2);
        var backing = devices.Create(new DeviceOptions { Name = "mem0", Size = 16 << 20, MemoryBacked = true }, ActorBlk.Hardware.Topology.CpuTopology.Simulated(2));
        var server = NbdServer.Start(new NbdDeviceList([backing]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) });
        var layer = BlockLayer.Get(Sys);
        var remote = (BlockDevice)await layer.CreateDeviceAsync(new DeviceOptions { Name = "remote0", Driver = "nbd", Uri = $"nbd://127.0.0.1:{server.LocalEndPoint.Port}/mem0", IoTimeoutMs = 5000 });
        try
        {
            await remote.WriteAsync(0, new byte[4096]);

            // The server goes: the device is gone, and supervision tries to reopen it.
            await server.DisposeAsync();
            await AwaitConditionAsync(async () => (await layer.GetDeviceInfoAsync("remote0")).Health.Contains("Reopening", StringComparison.OrdinalIgnoreCase), Liveness, TimeSpan.FromMilliseconds(20));
            var waiting = remote.ExecuteAsync(BlockOp.Read, 0, 4096, new byte[4096]).AsTask();

            ((NbdClientDriver)remote.Queue.Driver).Retire("the test gives it up");
            Assert.Equal(BlockStatus.Offline, await waiting.WaitAsync(Liveness));
            Assert.True(remote.Queue.IsOffline);
            Assert.Equal(BlockStatus.Offline, await remote.ExecuteAsync(BlockOp.Read, 0, 4096, new byte[4096]).AsTask().WaitAsync(Liveness));
        }
        finally
        {
            await layer.DestroyDeviceAsync("remote0");
        }
    }
}
