using System.Text.RegularExpressions;
using ActorBlk.Actors;
using ActorBlk.Hardware.Requests;
using ActorBlk.Host.Tests.Support;
using Akka.Actor;
using Akka.Configuration;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// `actorblk serve` as a process: a single-node cluster on 127.0.0.1 serving the devices of its
/// configuration, reached by a second actor system over Akka remoting, stopped by SIGTERM.
/// </summary>
[Collection(ServeProcessesCollection.Name)]
public sealed partial class ServeSpec
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(60);

    private static ActorSystem Client() => ActorSystem.Create("client", ConfigurationFactory.ParseString("""
        akka.loglevel = WARNING
        akka.actor.provider = remote
        akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
        akka.actor.serializers.actorblk = "ActorBlk.Actors.Serialization.ActorBlkHyperionSerializer, ActorBlk.Actors"
        akka.actor.serialization-bindings { "ActorBlk.Actors.Serialization.IActorBlkMessage, ActorBlk.Actors" = actorblk }
        """));

    [GeneratedRegex(@"Devices are addressable at (?<address>akka\.tcp://\S+/user/actorblk)")]
    private static partial Regex AddressLine();

    [Fact]
    public async Task Serves_the_default_configuration_over_remoting_and_stops_on_sigterm()
    {
        await using var node = ActorBlkProcess.Start("serve", "--config", RepositoryFiles.Hocon(), "--port", "0", "--nbd-listen", "127.0.0.1:0");
        var line = await node.WaitForLineAsync(l => AddressLine().IsMatch(l), StartTimeout);
        var guardianPath = AddressLine().Match(line).Groups["address"].Value;
        Assert.Contains("Serving nullb0", node.Output);
        Assert.Contains("Serving disk0: file device of 256MiB", node.Output);
        // The guardian logs the driver line through Akka's logger, which may write it after the
        // address line: wait for it rather than expect it already there.
        const string DriverLine = "disk0: file driver: file /var/tmp/actorblk-disk0.img (O_DIRECT";
        if (!node.Output.Contains(DriverLine, StringComparison.Ordinal))
        {
            await node.WaitForLineAsync(l => l.Contains(DriverLine, StringComparison.Ordinal), StartTimeout);
        }

        using (var client = Client())
        {
            var guardian = client.ActorSelection(guardianPath);
            var data = Enumerable.Range(0, 4096).Select(i => (byte)(i * 7)).ToArray();
            var write = await guardian.Ask<SoftwareContextProtocol.Completed>(new BlockLayer.Io("nullb0", 1, BlockOp.Write, 8192, 4096, data), TimeSpan.FromSeconds(30));
            var read = await guardian.Ask<SoftwareContextProtocol.Completed>(new BlockLayer.Io("nullb0", 2, BlockOp.Read, 8192, 4096), TimeSpan.FromSeconds(30));
            var rejected = await guardian.Ask<SoftwareContextProtocol.Rejected>(new BlockLayer.Io("nullb0", 3, BlockOp.Read, 100, 512), TimeSpan.FromSeconds(30));
            var unknown = await guardian.Ask<BlockLayer.NoSuchDevice>(new BlockLayer.Io("sda", 4, BlockOp.Read, 0, 512), TimeSpan.FromSeconds(10));
            var list = await guardian.Ask<BlockLayer.DeviceList>(BlockLayer.ListDevices.Instance, TimeSpan.FromSeconds(10));

            // The file device: a real write and read of the backing file, through the cluster.
            var diskWrite = await guardian.Ask<SoftwareContextProtocol.Completed>(new BlockLayer.Io("disk0", 5, BlockOp.Write, 1 << 20, 4096, data), TimeSpan.FromSeconds(10));
            var diskRead = await guardian.Ask<SoftwareContextProtocol.Completed>(new BlockLayer.Io("disk0", 6, BlockOp.Read, 1 << 20, 4096), TimeSpan.FromSeconds(10));
            Assert.Equal(BlockStatus.Ok, diskWrite.Status);
            Assert.Equal(data, diskRead.Data);

            Assert.Equal(BlockStatus.Ok, write.Status);
            Assert.Equal(data, read.Data);
            Assert.Equal(Hardware.Devices.InvalidRequestReason.Misaligned, rejected.Reason);
            Assert.Equal("sda", unknown.Name);
            Assert.Equal(["disk0", "nullb0"], list.Devices.Select(d => d.Name).Order());
            Assert.Equal(1L << 30, list.Devices.Single(d => d.Name == "nullb0").Capacity);
            Assert.Equal("file", list.Devices.Single(d => d.Name == "disk0").Driver);
            await client.Terminate();
        }

        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(TimeSpan.FromSeconds(60)));
        Assert.Contains("Unregistered nullb0: every request completed", node.Output);
        Assert.Contains("Unregistered disk0: every request completed", node.Output);
        Assert.Contains("ActorBlk node stopped", node.Output);
    }

    [Fact]
    public async Task Sysfs_and_hotplug_commands_reach_a_running_node_over_remoting()
    {
        // Issue 5 item 7: `actorblk sysfs` lists, reads and writes the node's attributes and
        // `actorblk hotplug` re-maps its devices, as separate processes over Akka remoting.
        await using var node = ActorBlkProcess.Start("serve", "--config", RepositoryFiles.Hocon(), "--port", "0", "--nbd-listen", "127.0.0.1:0");
        var line = await node.WaitForLineAsync(l => AddressLine().IsMatch(l), StartTimeout);
        var address = AddressLine().Match(line).Groups["address"].Value[..^"/user/actorblk".Length];

        async Task<(int Code, string Out, string All)> Run(params string[] args)
        {
            await using var command = ActorBlkProcess.Start([args[0], "--node", address, .. args[1..]]);
            var code = await command.WaitForExitAsync(StartTimeout);
            return (code, command.StandardOutput, command.Output);
        }

        var list = await Run("sysfs", "list", "block/nullb0/queue/");
        Assert.Equal(0, list.Code);
        Assert.Contains("block/nullb0/queue/nr_requests\n", list.Out);
        Assert.Equal(22, list.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);

        var timeout = await Run("sysfs", "cat", "/sys/block/nullb0/queue/io_timeout");
        Assert.Equal((0, "5000\n"), (timeout.Code, timeout.Out));
        var size = await Run("sysfs", "cat", "/sys/block/nullb0/queue/../size");
        Assert.Equal((0, "2097152\n"), (size.Code, size.Out));
        Assert.Equal(0, (await Run("sysfs", "write", "block/nullb0/queue/nr_requests", "2")).Code);
        Assert.Equal("4\n", (await Run("sysfs", "cat", "block/nullb0/queue/nr_requests")).Out);

        // VALUE '' writes no bytes, as `echo -n "" >` does: taken, nothing changes (it was
        // EINVAL, exit 1); a read-only attribute still refuses it.
        var empty = await Run("sysfs", "write", "block/nullb0/queue/nr_requests", string.Empty);
        Assert.Equal((0, string.Empty), (empty.Code, empty.Out));
        Assert.Equal("4\n", (await Run("sysfs", "cat", "block/nullb0/queue/nr_requests")).Out);
        Assert.Contains("(EACCES)", (await Run("sysfs", "write", "block/nullb0/queue/logical_block_size", string.Empty)).All);

        var refused = await Run("sysfs", "write", "block/nullb0/queue/nr_requests", "lots");
        Assert.Equal(1, refused.Code);
        Assert.Contains("block/nullb0/queue/nr_requests: 'lots' is not an unsigned number", refused.All);
        Assert.Contains("(EINVAL)", refused.All);
        Assert.Contains("(EACCES)", (await Run("sysfs", "write", "block/nullb0/queue/logical_block_size", "4096")).All);
        Assert.Contains("(ENOENT)", (await Run("sysfs", "cat", "block/sdz/queue/nr_requests")).All);

        // This machine's CPUs (the default hocon.conf reads /sys): the last one cannot go.
        var cpus = Environment.ProcessorCount;
        var last = await Run("hotplug", "offline", (cpus - 1).ToString(System.Globalization.CultureInfo.InvariantCulture));
        if (cpus > 1)
        {
            Assert.Equal(0, last.Code);
            Assert.Contains($"CPU {cpus - 1} offline", last.Out);
            Assert.Contains("2 device(s) re-mapped", last.Out);
            var back = await Run("hotplug", "online", (cpus - 1).ToString(System.Globalization.CultureInfo.InvariantCulture));
            Assert.Equal(0, back.Code);
            Assert.Contains($"online CPUs 0-{cpus - 1}", back.Out);
        }
        else
        {
            Assert.Contains("(EBUSY)", last.All);
        }

        Assert.Contains("(ENOENT)", (await Run("hotplug", "online", "4096")).All);
        var online = await Run("sysfs", "cat", "devices/system/cpu/online");
        Assert.Equal(cpus > 1 ? $"0-{cpus - 1}\n" : "0\n", online.Out);
        Assert.Equal(2, (await Run("hotplug", "sideways", "1")).Code);

        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(TimeSpan.FromSeconds(60)));
        Assert.Contains("sysfs: wrote '2' to block/nullb0/queue/nr_requests", node.Output);
    }

    [Fact]
    public async Task The_commands_say_so_when_no_node_answers()
    {
        await using var command = ActorBlkProcess.Start("sysfs", "--port", "1", "list");

        Assert.Equal(1, await command.WaitForExitAsync(StartTimeout));
        Assert.Contains("no ActorBlk node answered at akka.tcp://actorblk@127.0.0.1:1", command.Output);
    }

    [Fact]
    public async Task A_bad_device_entry_is_refused_with_the_key_named()
    {
        var config = Path.Combine(Path.GetTempPath(), $"actorblk-bad-{Guid.NewGuid():N}.conf");
        await File.WriteAllTextAsync(config, "actorblk.devices = [ { name = nullb0, hw_queue_depth = 0 } ]");
        try
        {
            await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0");

            Assert.Equal(2, await node.WaitForExitAsync(StartTimeout));
            Assert.Contains("option 'hw_queue_depth'", node.Output);
        }
        finally
        {
            File.Delete(config);
        }
    }

    /// <summary>
    /// A bad value in <c>actorblk.nbd</c> is a usage error naming its key: a duration or a count
    /// that did not parse read "The input string 'banana' was not in a correct format.", and a
    /// count out of range named a C# property ("(Parameter 'MaxInFlight')"; an outside audit).
    /// </summary>
    [Theory]
    [InlineData("handshake-timeout = banana", "actorblk: NBD export: actorblk.nbd.handshake-timeout: 'banana' is not a duration (e.g. 500ms, 30s).")]
    [InlineData("shutdown-grace = -1s", "actorblk: NBD export: actorblk.nbd.shutdown-grace: '-1s' is negative; a duration here is 0 or more (e.g. 500ms, 30s).")] // worded as the node-wide durations (a review)
    [InlineData("handshake-timeout = -30s", "actorblk: NBD export: actorblk.nbd.handshake-timeout: '-30s' is negative; a duration here is 0 or more (e.g. 500ms, 30s).")]
    [InlineData("max-connections = lots", "actorblk: NBD export: actorblk.nbd.max-connections: 'lots' is not a whole number.")]
    [InlineData("max-in-flight = -3", "actorblk: NBD export: actorblk.nbd.max-in-flight must be 1 to 65536, not -3.\n")]
    [InlineData("stall-timeout = 500ms", "actorblk: NBD export: actorblk.nbd.stall-timeout must be from 1 s to 1 hour, not 0.5 s.\n")]
    public async Task A_bad_nbd_setting_is_refused_with_its_key_named(string setting, string message)
    {
        var config = Path.Combine(Path.GetTempPath(), $"actorblk-bad-{Guid.NewGuid():N}.conf");
        await File.WriteAllTextAsync(config, $"actorblk.nbd.listen = \"127.0.0.1:0\"\nactorblk.nbd.{setting}\nactorblk.devices = []\n");
        try
        {
            await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0");

            Assert.Equal(2, await node.WaitForExitAsync(StartTimeout));
            Assert.Contains(message, node.Output, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(config);
        }
    }

    /// <summary>
    /// A section of the wrong kind where the NBD export's settings are read (<c>actorblk = 5</c>,
    /// <c>actorblk.nbd = foo</c>) is a usage error naming it, as for any other setting of the wrong
    /// kind: serve read the NBD section first, and Akka's merge of such a value with the defaults
    /// threw a NullReferenceException, which aborted serve with a stack trace (exit 134; a README
    /// audit).
    /// </summary>
    [Theory]
    [InlineData("actorblk = 5", "actorblk: configuration: actorblk: a section { ... } is expected, not '5'.\n")]
    [InlineData("actorblk.nbd = foo", "actorblk: configuration: actorblk.nbd: a section { ... } is expected, not 'foo'.\n")]
    public async Task A_section_of_the_wrong_kind_is_refused_before_the_nbd_settings_are_read(string setting, string message)
    {
        var config = Path.Combine(Path.GetTempPath(), $"actorblk-bad-{Guid.NewGuid():N}.conf");
        await File.WriteAllTextAsync(config, $"{setting}\n");
        try
        {
            await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0", "--nbd-listen", "127.0.0.1:0");

            Assert.Equal(2, await node.WaitForExitAsync(StartTimeout));
            Assert.Contains(message, node.Output, StringComparison.Ordinal);
            Assert.DoesNotContain("Exception", node.Output, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(config);
        }
    }

    /// <summary>
    /// HOCON's null for a setting, and a remoting key ActorBlk reads itself that is null, a list or a
    /// section, is a usage error naming the key: `drain-timeout = null` failed serve with "Value cannot
    /// be null." and a stack trace (exit 1), `enable-ssl = null` with Akka's NotSupportedException,
    /// and `port = null` started the node and failed it with an ArgumentNullException (an audit).
    /// </summary>
    [Theory]
    [InlineData("actorblk.drain-timeout = null", "actorblk: configuration: actorblk.drain-timeout: null is not a value here; remove the key for the default (30s).\n")]
    [InlineData("akka.remote.dot-netty.tcp.enable-ssl = null", "actorblk: configuration: akka.remote.dot-netty.tcp.enable-ssl: 'null' is not on or off.\n")]
    [InlineData("akka.remote.dot-netty.tcp.port = []", "actorblk: configuration: akka.remote.dot-netty.tcp.port: '[ ... ]' is not a port (0 to 65535).\n")]
    public async Task Null_or_a_value_of_the_wrong_kind_is_refused_naming_the_key(string setting, string message)
    {
        var config = Path.Combine(Path.GetTempPath(), $"actorblk-null-{Guid.NewGuid():N}.conf");
        await File.WriteAllTextAsync(config, $"{setting}\n");
        try
        {
            // No --port: it would replace the file's.
            await using var node = ActorBlkProcess.Start("serve", "--config", config, "--nbd-listen", "off");

            Assert.Equal(2, await node.WaitForExitAsync(StartTimeout));
            Assert.Contains(message, node.Output, StringComparison.Ordinal);
            Assert.DoesNotContain("Exception", node.Output, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(config);
        }
    }

    [Theory]
    [InlineData("serve --bogus", "Unrecognized command or argument '--bogus'")]
    [InlineData("frobnicate", "Unrecognized command or argument 'frobnicate'")]
    [InlineData("serve --port 70000", "--port")]
    [InlineData("serve --config /nonexistent.conf", "does not exist")]
    [InlineData("sysfs --port 4053", "Required command was not provided.")]
    [InlineData("sysfs --port 4053 cat", "Required argument 'PATH' missing for command: 'cat'.")]
    [InlineData("hotplug --port 4053 offline one", "'one' is not a CPU number")]
    public async Task Usage_errors_exit_with_2_and_say_why(string args, string message)
    {
        await using var node = ActorBlkProcess.Start(args.Split(' '));

        Assert.Equal(2, await node.WaitForExitAsync(StartTimeout));
        Assert.Contains(message, node.Output);
    }
}
