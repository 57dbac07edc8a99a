using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Testing;
using Akka.Actor;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// The topology actor notices host CPU hotplug through the sysfs <c>online</c> file (issue 5 item 1):
/// a test sysfs directory stands in for <c>/sys/devices/system/cpu</c>, and virtual time drives the
/// watch, so each change of the file re-maps the registered queues as a CpuOffline/CpuOnline would.
/// </summary>
public sealed class HotplugWatchSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly TempDirectory Root = CreateRoot();

    public HotplugWatchSpec(ITestOutputHelper output)
        : base(ConfigurationFactory.ParseString($"""
            akka.scheduler.implementation = "ActorBlk.Actors.Tests.Support.VirtualScheduler, ActorBlk.Actors.Tests"
            actorblk.topology.source = system
            actorblk.topology.sysfs-root = "{CpuRoot}"
            actorblk.topology.watch-interval = 1s
            """).WithFallback(Configs.Simulated), output: output)
    {
    }

    private static string CpuRoot => Path.Combine(Root.Path, "cpu");

    private BlockLayer Layer => BlockLayer.Get(Sys);

    private VirtualScheduler Scheduler => (VirtualScheduler)Sys.Scheduler;

    [Fact]
    public async Task Changes_of_the_online_file_take_cpus_offline_and_back_online()
    {
        await File.WriteAllTextAsync(Path.Combine(CpuRoot, "online"), "0-3\n");
        Assert.Equal("sysfs:" + CpuRoot, Layer.Topology.Source);
        var device = await Layer.CreateDeviceAsync(new DeviceOptions { Name = "watched", Size = 1 << 20, SubmitQueues = 2, PollQueues = 0 });

        // CPUs 1 and 3 go away on the host: two events, two remaps of the device.
        await File.WriteAllTextAsync(Path.Combine(CpuRoot, "online"), "0,2\n");
        Scheduler.Advance(TimeSpan.FromSeconds(1));
        await AwaitTopologyAsync(online: "0,2", version: 3);
        Assert.All(device.Queue.HardwareContexts.Where(h => h.IsMapped), h => Assert.True(h.CpuMask.Contains(0) || h.CpuMask.Contains(2)));

        // Nothing changes while the file stays as it is, even after an event sent by hand.
        await Layer.SetCpuOnlineAsync(2, online: false);
        Scheduler.Advance(TimeSpan.FromSeconds(3));
        await AwaitTopologyAsync(online: "0", version: 4);

        // CPU 1 comes back on the host; CPU 2, taken offline by hand, stays offline.
        await File.WriteAllTextAsync(Path.Combine(CpuRoot, "online"), "0-2\n");
        Scheduler.Advance(TimeSpan.FromSeconds(1));
        await AwaitTopologyAsync(online: "0-1", version: 5);

        var data = new byte[4096];
        await device.WriteAsync(0, data, cpu: 3);
        await device.ReadAsync(0, data, cpu: 1);
    }

    protected override void Dispose(bool disposing)
    {
        base.Dispose(disposing);
        if (disposing)
        {
            Root.Dispose();
        }
    }

    private async Task AwaitTopologyAsync(string online, long version)
    {
        var topology = Sys.ActorSelection(Layer.Guardian.Path / "cpu-topology");
        await AwaitAssertAsync(async () =>
        {
            var info = await topology.Ask<CpuTopologyProtocol.TopologyInfo>(CpuTopologyProtocol.GetTopology.Instance, TimeSpan.FromSeconds(10));
            Assert.Equal(online, info.Online);
            Assert.Equal(version, info.Version);
        }, TimeSpan.FromSeconds(20));
    }

    private static TempDirectory CreateRoot()
    {
        var root = new TempDirectory("actorblk-sysfs");
        var cpu = Directory.CreateDirectory(Path.Combine(root.Path, "cpu")).FullName;
        File.WriteAllText(Path.Combine(cpu, "possible"), "0-3\n");
        File.WriteAllText(Path.Combine(cpu, "present"), "0-3\n");
        File.WriteAllText(Path.Combine(cpu, "online"), "0-3\n");
        return root;
    }
}
