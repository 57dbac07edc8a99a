using System.Globalization;
using ActorBlk.Actors;
using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Sysfs;
using ActorBlk.Host.Commands;
using ActorBlk.Host.Iostat;
using Akka.Actor;
using Akka.Configuration;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// <c>actorblk iostat</c>'s CPU report (sysstat's <c>avg-cpu</c>) against a node in this process:
/// the node publishes the <c>cpu</c> line of its machine's <c>/proc/stat</c> as its <c>stat</c>
/// attribute, and iostat computes sysstat's percentages from it, the first report since boot. A
/// node that does not publish it (here a stand-in answering as a node on a machine without
/// <c>/proc/stat</c> would) gets the device report alone with a note, and <c>-c</c> alone fails.
/// </summary>
public sealed class IostatCpuSpec : IAsyncLifetime
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(60);

    private ActorSystem _node = null!;
    private string _address = string.Empty;

    public Task InitializeAsync()
    {
        // A node with remoting on a free loopback port and no device.
        var config = ConfigurationFactory.ParseString("""
            akka.loglevel = WARNING
            akka.actor.provider = remote
            akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
            actorblk.topology.source = simulated
            """).WithFallback(ActorBlkRemoting.SerializerConfig).WithFallback(ActorBlkSettings.DefaultConfig());
        _node = ActorSystem.Create(NodeConfig.SystemName, config);
        _ = BlockLayer.Get(_node);
        _address = ((ExtendedActorSystem)_node).Provider.DefaultAddress.ToString();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _node.Terminate();

    [SkippableFact]
    public async Task The_first_report_is_the_machines_cpu_use_since_boot()
    {
        Skip.IfNot(File.Exists(CpuStatSample.ProcStat), "no /proc/stat on this machine");
        var before = CpuStatSample.Parse(File.ReadLines(CpuStatSample.ProcStat).First());
        using var output = new StringWriter();
        using var error = new StringWriter();
        Assert.Equal(0, await IostatCommand.RunAsync(_address, null, IostatOptions.Parse(["-c"]), output, error: error).WaitAsync(Within));
        var after = CpuStatSample.Parse(File.ReadLines(CpuStatSample.ProcStat).First());
        Assert.Empty(error.ToString());

        var lines = output.ToString().Split('\n');
        Assert.Equal(IostatReport.CpuHeader, lines[2]);
        var printed = lines[3].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(v => double.Parse(v, CultureInfo.InvariantCulture)).ToArray();
        Assert.Equal(6, printed.Length);

        // Read by the node between the two direct reads: each share since boot lies within what
        // the jiffies counted meanwhile can move it (plus the rounding to 2 decimals).
        var low = IostatReport.ComputeCpu(default, before);
        var high = IostatReport.ComputeCpu(default, after);
        static ulong Total(CpuStatSample s) => s.User + s.Nice + s.System + s.Idle + s.Iowait + s.Irq + s.Softirq + s.Steal;
        var slack = 100.0 * (Total(after) - Total(before)) / Total(before) + 0.006;
        double[] Shares(IostatCpu c) => [c.User, c.Nice, c.System, c.Iowait, c.Steal, c.Idle];
        for (var i = 0; i < 6; i++)
        {
            Assert.InRange(printed[i], Math.Min(Shares(low)[i], Shares(high)[i]) - slack, Math.Max(Shares(low)[i], Shares(high)[i]) + slack);
        }

        // Over an interval the six shares make the whole.
        using var interval = new StringWriter();
        Assert.Equal(0, await IostatCommand.RunAsync(_address, null, IostatOptions.Parse(["-c", "-y", "-o", "JSON", "0.2", "2"]), interval, error: error).WaitAsync(Within));
        using var document = System.Text.Json.JsonDocument.Parse(interval.ToString());
        var statistics = document.RootElement.GetProperty("sysstat").GetProperty("hosts")[0].GetProperty("statistics");
        Assert.Equal(2, statistics.GetArrayLength());
        foreach (var report in statistics.EnumerateArray())
        {
            var cpu = report.GetProperty("avg-cpu");
            Assert.Equal(["user", "nice", "system", "iowait", "steal", "idle"], cpu.EnumerateObject().Select(p => p.Name));
            Assert.InRange(cpu.EnumerateObject().Sum(p => p.Value.GetDouble()), 99.95, 100.05);
            Assert.False(report.TryGetProperty("disk", out _));
        }
    }

    [Fact]
    public async Task A_node_without_the_cpu_figures_gets_the_device_report_and_c_alone_fails()
    {
        // A stand-in node: its sysfs actor answers uptime, the CPUs and one device's stat, and
        // ENOENT for stat, as a node on a machine without /proc/stat does.
        var config = ConfigurationFactory.ParseString("""
            akka.loglevel = WARNING
            akka.actor.provider = remote
            akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
            """).WithFallback(ActorBlkRemoting.SerializerConfig);
        var bare = ActorSystem.Create(NodeConfig.SystemName, config);
        try
        {
            bare.ActorOf(Props.Create(() => new StandIn()), BlockLayer.GuardianName);
            var address = ((ExtendedActorSystem)bare).Provider.DefaultAddress.ToString();

            using var output = new StringWriter();
            using var error = new StringWriter();
            Assert.Equal(0, await IostatCommand.RunAsync(address, null, IostatOptions.Parse([]), output, error: error).WaitAsync(Within));
            Assert.Contains("actorblk: the node does not publish its CPU use (no stat attribute", error.ToString(), StringComparison.Ordinal);
            Assert.DoesNotContain("avg-cpu", output.ToString(), StringComparison.Ordinal);
            Assert.Contains("\n" + IostatReport.BasicHeader + "\nnullb0 ", output.ToString(), StringComparison.Ordinal);

            using var cpuOnly = new StringWriter();
            using var failed = new StringWriter();
            Assert.Equal(1, await IostatCommand.RunAsync(address, null, IostatOptions.Parse(["-c"]), cpuOnly, error: failed).WaitAsync(Within));
            Assert.Contains("the node does not publish its CPU use", failed.ToString(), StringComparison.Ordinal);
            Assert.Contains("use -d for the device report", failed.ToString(), StringComparison.Ordinal);
        }
        finally
        {
            await bare.Terminate();
        }
    }

    [Theory]
    [InlineData("10 0 eighty 5 0 0 0 0 0 5 5 0 0 0 0 0 0\n", "0-1\n", "the node's block/nullb0/stat")]
    [InlineData("10 0 80 5 0 0 0 0 0 5 5 0 0 0 0 0 0\n", "0-x\n", "the node's devices/system/cpu/present is not a CPU list: '0-x'")]
    public async Task A_node_answer_that_does_not_parse_is_a_failure_not_a_configuration_error(string stat, string present, string expected)
    {
        // A malformed answer from the node (a stat line or CPU list that does not parse) ended
        // iostat as "configuration: ..." with exit 2 (a FormatException out of RunAsync): it is a
        // failure of the node's answer, exit 1, naming the attribute.
        var config = ConfigurationFactory.ParseString("""
            akka.loglevel = WARNING
            akka.actor.provider = remote
            akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
            """).WithFallback(ActorBlkRemoting.SerializerConfig);
        var bare = ActorSystem.Create(NodeConfig.SystemName, config);
        try
        {
            bare.ActorOf(Props.Create(() => new StandIn(stat, present)), BlockLayer.GuardianName);
            var address = ((ExtendedActorSystem)bare).Provider.DefaultAddress.ToString();

            using var output = new StringWriter();
            using var error = new StringWriter();
            Assert.Equal(1, await IostatCommand.RunAsync(address, null, IostatOptions.Parse(["-d"]), output, error: error).WaitAsync(Within));
            Assert.Contains("actorblk: " + expected, error.ToString(), StringComparison.Ordinal);
        }
        finally
        {
            await bare.Terminate();
        }
    }

    private sealed class StandIn : ReceiveActor
    {
        public StandIn()
            : this("10 0 80 5 0 0 0 0 0 5 5 0 0 0 0 0 0\n", "0-1\n")
        {
        }

        public StandIn(string stat, string present)
        {
            var sysfs = Context.ActorOf(Props.Create(() => new StandInSysfs(stat, present)), Sysfs.ActorName);
            ReceiveAny(message => sysfs.Forward(message));
        }
    }

    private sealed class StandInSysfs : ReceiveActor
    {
        public StandInSysfs(string stat, string present)
        {
            Receive<Sysfs.List>(_ => Sender.Tell(new Sysfs.Listing(["block/nullb0/stat"])));
            Receive<Sysfs.Read>(read => Sender.Tell(read.Path switch
            {
                "uptime" => new Sysfs.Value(read.Path, "10.00\n"),
                "devices/system/cpu/present" => new Sysfs.Value(read.Path, present),
                "block/nullb0/stat" => new Sysfs.Value(read.Path, stat),
                _ => (object)new Sysfs.Failed(read.Path, "ENOENT", "no such attribute"),
            }));
        }
    }
}
