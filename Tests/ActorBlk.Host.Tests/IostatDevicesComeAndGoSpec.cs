using System.Threading.Channels;
using ActorBlk.Actors;
using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Devices;
using ActorBlk.Host.Commands;
using ActorBlk.Host.Iostat;
using Akka.Actor;
using Akka.Configuration;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// An outside audit (findings 2 to 4): <c>actorblk iostat</c> against a node whose devices come
/// and go, run in this process against a node in this process. A device that appeared between two
/// samplings never showed what it did before its first one; a node with no device, at the start
/// or once its last device was destroyed, ended the reports with exit 1 ("the node did not list
/// its devices: ENOENT"); a named device the node lacked ended them too ("there is no device").
/// sysstat gives a new device a zero previous record, keeps reporting an empty list, and skips a
/// named device until it exists; so does iostat now. The reports are read as they are flushed:
/// no wall-clock assertion, and whatever the timing the amounts over the reports add up to the
/// I/O done.
/// </summary>
public sealed class IostatDevicesComeAndGoSpec : IAsyncLifetime
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(60);
    private const int Block = 4096;

    private ActorSystem _node = null!;
    private BlockLayer _layer = null!;
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
        _layer = BlockLayer.Get(_node);
        _address = ((ExtendedActorSystem)_node).Provider.DefaultAddress.ToString();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _node.Terminate();

    [Fact]
    public async Task A_device_created_between_samplings_shows_all_it_did_and_an_empty_node_gets_empty_reports()
    {
        var reports = new Reports();
        using var stop = new CancellationTokenSource();
        var run = IostatCommand.RunAsync(_address, null, IostatOptions.Parse(["1"]), reports, stop.Token);
        await reports.NextAsync(run);   // the banner

        // No device: the report since the start is empty, and the reports go on.
        Assert.Empty(Rows(await reports.NextAsync(run)));

        // Created and written between two samplings: its 100 writes show in full.
        var dyn0 = await _layer.CreateDeviceAsync(new DeviceOptions { Name = "dyn0", Size = 64L << 20, MemoryBacked = true });
        for (var i = 0; i < 100; i++)
        {
            await dyn0.WriteAsync(i * 65536L, new byte[Block]);
        }

        Assert.Equal(400, await AmountAsync(reports, run, "dyn0", column: 6, until: 400));

        // Its last device destroyed, the node lists nothing: an empty report, and they go on.
        await _layer.DestroyDeviceAsync("dyn0");
        for (var i = 0; i < 10 && Rows(await reports.NextAsync(run)).Count > 0; i++)
        {
        }

        // Created again under its name: its 30 reads show in full too.
        dyn0 = await _layer.CreateDeviceAsync(new DeviceOptions { Name = "dyn0", Size = 64L << 20, MemoryBacked = true });
        for (var i = 0; i < 30; i++)
        {
            await dyn0.ReadAsync(i * 65536L, new byte[Block]);
        }

        Assert.Equal(120, await AmountAsync(reports, run, "dyn0", column: 5, until: 120));

        await stop.CancelAsync();
        Assert.Equal(0, await run.WaitAsync(Within));
    }

    [Fact]
    public async Task A_named_device_the_node_lacks_is_skipped_until_it_exists()
    {
        var reports = new Reports();
        using var stop = new CancellationTokenSource();
        var run = IostatCommand.RunAsync(_address, null, IostatOptions.Parse(["dyn0", "nope", "1"]), reports, stop.Token);
        await reports.NextAsync(run);   // the banner
        Assert.Empty(Rows(await reports.NextAsync(run)));

        var dyn0 = await _layer.CreateDeviceAsync(new DeviceOptions { Name = "dyn0", Size = 64L << 20, MemoryBacked = true });
        for (var i = 0; i < 10; i++)
        {
            await dyn0.WriteAsync(i * 65536L, new byte[Block]);
        }

        Assert.Equal(40, await AmountAsync(reports, run, "dyn0", column: 6, until: 40));
        Assert.DoesNotContain("nope", reports.ToString(), StringComparison.Ordinal);

        await stop.CancelAsync();
        Assert.Equal(0, await run.WaitAsync(Within));
    }

    // The device rows of a basic report: Device tps kB_read/s kB_wrtn/s kB_dscd/s kB_read kB_wrtn kB_dscd
    // (the CPU report before them, its header and its values line, indented, are not rows).
    private static List<string[]> Rows(string report) =>
        [.. report.Split('\n').Where(l => l.Length > 0 && l[0] != ' ' && !l.StartsWith("Device", StringComparison.Ordinal) && !l.StartsWith("avg-cpu:", StringComparison.Ordinal)).Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))];

    // The sum of a column (kB_read 5, kB_wrtn 6) of the device's rows over the reports, read until
    // it reaches the amount or ten reports after the device first shows (then it falls short).
    private static async Task<long> AmountAsync(Reports reports, Task<int> run, string device, int column, long until)
    {
        long sum = 0;
        var seen = 0;
        while (sum < until && seen < 10)
        {
            var row = Rows(await reports.NextAsync(run)).SingleOrDefault(r => r[0] == device);
            if (row is not null || seen > 0)
            {
                seen++;
                sum += row is null ? 0 : long.Parse(row[column], System.Globalization.CultureInfo.InvariantCulture);
            }
        }

        return sum;
    }

    // iostat's output, one chunk per flush: the banner, then one report per flush.
    private sealed class Reports : StringWriter
    {
        private readonly Channel<string> _flushed = Channel.CreateUnbounded<string>();
        private int _taken;

        public override Task FlushAsync()
        {
            var all = ToString();
            _flushed.Writer.TryWrite(all[_taken..]);
            _taken = all.Length;
            return Task.CompletedTask;
        }

        // The next chunk; fails at once if iostat ends instead.
        public async Task<string> NextAsync(Task<int> run)
        {
            var next = _flushed.Reader.ReadAsync().AsTask();
            if (await Task.WhenAny(next, run).WaitAsync(Within) != next)
            {
                Assert.Fail($"iostat ended (exit {await run}) instead of reporting:\n{this}");
            }

            return await next;
        }
    }
}
