using ActorBlk.Actors;
using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Host.Commands;
using ActorBlk.Host.Iostat;
using Akka.Actor;
using Akka.Configuration;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// The order of <c>actorblk iostat</c>'s devices, as sysstat 12.6 and 12.7 order them (iostat.c):
/// under <c>-p</c> without a list, grouped (<c>-xp</c>) or <c>-p ALL</c> (<c>I_D_EVERYTHING</c>)
/// it reads <c>/proc/diskstats</c> and <c>add_list_device</c> appends each device it has not seen,
/// so they come in the kernel's registration order; otherwise (no name, names, <c>ALL</c>) it
/// inserts them by <c>strcmp</c>, in name order. The bench printed name order under <c>-p</c>
/// too (an audit). The node's registration order is its guardian's: its device list
/// (<see cref="BlockLayer.ListDevices"/>) gives the devices in the order they registered, a
/// device destroyed and created again last.
/// </summary>
public sealed class IostatDeviceOrderSpec : IAsyncLifetime
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(60);

    private ActorSystem _node = null!;
    private BlockLayer _layer = null!;
    private string _address = string.Empty;

    public Task InitializeAsync()
    {
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
    public async Task Under_p_the_devices_come_in_registration_order_else_in_name_order()
    {
        foreach (var name in new[] { "zeta", "alpha", "mid" })
        {
            await CreateUsedAsync(name);
        }

        string[] registered = ["zeta", "alpha", "mid"];
        string[] sorted = ["alpha", "mid", "zeta"];
        Assert.Equal(registered, await DevicesAsync("-d", "-p"));
        Assert.Equal(registered, await DevicesAsync("-d", "-p", "ALL"));
        Assert.Equal(registered, await DevicesAsync("-dxp"));
        Assert.Equal(registered, await DevicesAsync("-d", "-p", "-o", "JSON"));
        Assert.Equal(sorted, await DevicesAsync("-d"));
        Assert.Equal(sorted, await DevicesAsync("-d", "ALL"));
        Assert.Equal(sorted, await DevicesAsync("-d", "zeta", "mid", "alpha"));
        Assert.Equal(sorted, await DevicesAsync("-d", "-p", "zeta,mid,alpha"));

        // Destroyed and created again: it registers anew, last, as a disk added again comes last in
        // /proc/diskstats.
        await _layer.DestroyDeviceAsync("zeta");
        await CreateUsedAsync("zeta");
        Assert.Equal(["alpha", "mid", "zeta"], await DevicesAsync("-d", "-p"));
        var list = await _layer.Guardian.Ask<BlockLayer.DeviceList>(BlockLayer.ListDevices.Instance, Within);
        Assert.Equal(["alpha", "mid", "zeta"], list.Devices.Select(d => d.Name));
    }

    // sysstat (iostat.c main, add_list_device) puts the devices named in -p's list, or as operands,
    // in its device list while it parses the command line: in strcmp order until ALL (or -p without
    // a list) sets I_D_EVERYTHING, after the names already there once it is; reading
    // /proc/diskstats then appends the devices it has not seen. So -p mid,ALL reports mid first,
    // then the others in registration order; they all came in registration order (mid last here).
    [Fact]
    public async Task Under_p_ALL_the_devices_named_come_first_then_the_others_in_registration_order()
    {
        foreach (var name in new[] { "zeta", "alpha", "mid" })
        {
            await CreateUsedAsync(name);
        }

        Assert.Equal(["mid", "zeta", "alpha"], await DevicesAsync("-d", "-p", "mid,ALL"));
        Assert.Equal(["mid", "zeta", "alpha"], await DevicesAsync("-d", "-p", "mid,ALL", "-o", "JSON"));
        Assert.Equal(["mid", "alpha", "zeta"], await DevicesAsync("-d", "-p", "ALL,mid,alpha"));
        Assert.Equal(["alpha", "mid", "zeta"], await DevicesAsync("-d", "-p", "mid,alpha,ALL"));  // strcmp order before ALL
        Assert.Equal(["mid", "alpha", "zeta"], await DevicesAsync("-d", "-p", "ALL", "mid", "alpha"));
        Assert.Equal(["mid", "zeta", "alpha"], await DevicesAsync("-dxp", "mid"));
        Assert.Equal(["alpha", "zeta", "mid"], await DevicesAsync("-d", "-p", "alpha,nope,ALL"));

        // Without ALL, names are in name order, and without names in registration order, as before.
        Assert.Equal(["alpha", "mid"], await DevicesAsync("-d", "-p", "mid,alpha"));
        Assert.Equal(["zeta", "alpha", "mid"], await DevicesAsync("-d", "-p", "ALL"));
        Assert.Null(IostatOptions.Parse(["-p", "ALL"]).NamedFirst);
        Assert.Null(IostatOptions.Parse(["-p", "mid,alpha"]).NamedFirst);
        Assert.Equal(["alpha", "mid", "zeta"], IostatOptions.Parse(["-p", "zeta,mid", "-p", "alpha,ALL"]).NamedFirst!);
    }

    // A device named that the node does not have yet takes its place among the named ones when it
    // appears, as sysstat's list entry for it, made from the command line, is found by its name.
    [Fact]
    public void A_device_named_under_p_ALL_that_appears_later_comes_first()
    {
        var stat = DiskStatSample.Parse("1 0 8 1 0 0 0 0 0 1 1 0 0 0 0 0 0");
        static IostatCommand.Sampling Of(DiskStatSample stat, params string[] names) =>
            new(TimeSpan.Zero, names.ToDictionary(n => n, _ => (stat, TimeSpan.Zero)));

        var options = IostatOptions.Parse(["-p", "new,ALL"]);
        var first = Of(stat, "zeta", "alpha").WithNamedFirst(options.NamedFirst!);
        var second = Of(stat, "zeta", "alpha", "new").InOrderOf(first);
        Assert.Equal(["new", "zeta", "alpha"], second.Devices.Keys);
        Assert.Equal(["new", "zeta", "alpha"], IostatCommand.Rows(first, second, options).Select(r => r.Device));
    }

    // sysstat's device list lasts from one reading to the next: a device it has not seen goes at
    // the end, the others keep their places, a device that is gone is not reported.
    [Fact]
    public void From_one_sampling_to_the_next_the_devices_keep_their_places_and_new_ones_come_last()
    {
        var stat = DiskStatSample.Parse("1 0 8 1 0 0 0 0 0 1 1 0 0 0 0 0 0");
        static IostatCommand.Sampling Of(DiskStatSample stat, params string[] names) =>
            new(TimeSpan.Zero, names.ToDictionary(n => n, _ => (stat, TimeSpan.Zero)));

        var previous = Of(stat, "zeta", "alpha", "mid");
        var current = Of(stat, "beta", "mid", "zeta", "new").InOrderOf(previous);
        Assert.Equal(["zeta", "mid", "beta", "new"], current.Devices.Keys);
        var options = IostatOptions.Parse(["-p"]);
        Assert.True(options.RegistrationOrder);
        Assert.False(IostatOptions.Parse(["ALL"]).RegistrationOrder);
        Assert.Equal(["zeta", "mid", "beta", "new"], IostatCommand.Rows(previous, current, options).Select(r => r.Device));
    }

    // sysstat never drops a device from its list: one gone for a reading is only marked
    // nonexistent, and found again by its name when it comes back, in its place. Only the previous
    // sampling's devices were kept, so one gone for an interval (destroyed, then created again)
    // came back last.
    [Fact]
    public void A_device_gone_for_a_sampling_keeps_its_place_when_it_comes_back()
    {
        var stat = DiskStatSample.Parse("1 0 8 1 0 0 0 0 0 1 1 0 0 0 0 0 0");
        static IostatCommand.Sampling Of(DiskStatSample stat, params string[] names) =>
            new(TimeSpan.Zero, names.ToDictionary(n => n, _ => (stat, TimeSpan.Zero)));

        var first = Of(stat, "zeta", "alpha", "mid");
        var second = Of(stat, "alpha", "mid").InOrderOf(first);             // zeta destroyed
        Assert.Equal(["alpha", "mid"], second.Devices.Keys);
        var third = Of(stat, "alpha", "mid", "new", "zeta").InOrderOf(second); // zeta created again
        Assert.Equal(["zeta", "alpha", "mid", "new"], third.Devices.Keys);
        var fourth = Of(stat, "new", "mid", "zeta", "alpha").InOrderOf(third);
        Assert.Equal(["zeta", "alpha", "mid", "new"], fourth.Devices.Keys);
    }

    // A device that did a read, so that iostat's rule for unused devices does not leave it out.
    private async Task CreateUsedAsync(string name)
    {
        var device = await _layer.CreateDeviceAsync(new DeviceOptions { Name = name, Size = 1L << 20, MemoryBacked = true });
        await device.ReadAsync(0, new byte[4096]);
    }

    // The devices of one report (since the node started), in the order iostat printed them.
    private async Task<string[]> DevicesAsync(params string[] args)
    {
        var output = new StringWriter();
        var options = IostatOptions.Parse(args);
        Assert.Equal(0, await IostatCommand.RunAsync(_address, null, options, output).WaitAsync(Within));
        var text = output.ToString();
        if (options.Json)
        {
            return [.. text.Split('\n').Where(l => l.Contains("\"disk_device\"", StringComparison.Ordinal)).Select(l => l.Split('"')[3])];
        }

        // Device tps kB_read/s ...: the rows after the header, up to the blank line.
        return [.. text.Split('\n').SkipWhile(l => !l.StartsWith("Device", StringComparison.Ordinal)).Skip(1).TakeWhile(l => l.Length > 0).Select(l => l.Split(' ')[0])];
    }
}
