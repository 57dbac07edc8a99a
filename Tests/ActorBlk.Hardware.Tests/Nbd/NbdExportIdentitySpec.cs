using System.Net;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Nbd;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// A device's identity, as Linux's <c>diskseq</c>: every queue takes the next number of one
/// counter, the NBD server ends an export's description with it and the process's boot id, and the
/// NBD client refuses to reconnect to another device under the export's name on the same server
/// process (a cluster leak audit saw a remote handle read zeros after acknowledged writes: its
/// device had been destroyed and created again while the handle's connection was down).
/// </summary>
public sealed class NbdExportIdentitySpec
{
    private const string BootA = "0123456789abcdef0123456789abcdef";
    private const string BootB = "fedcba9876543210fedcba9876543210";

    [Fact]
    public async Task Every_queue_takes_the_next_disk_sequence_number_and_shows_it_with_its_size_and_read_only_state()
    {
        await using var devices = new RingDevices(2);
        var first = devices.Create(new DeviceOptions { Name = "seq0", Size = 8 << 20 }, CpuTopology.Simulated(2));
        var second = devices.Create(new DeviceOptions { Name = "seq1", Size = 4 << 20, ReadOnly = true }, CpuTopology.Simulated(2));

        Assert.True(second.Queue.DiskSeq > first.Queue.DiskSeq);
        Assert.Equal($"{first.Queue.DiskSeq}\n", first.Queue.Attributes.Read("block/seq0/diskseq"));
        Assert.Equal($"{second.Queue.DiskSeq}\n", second.Queue.Attributes.Read("block/seq1/diskseq"));

        // /sys/block/<dev>/size is in 512-byte sectors whatever the logical block size.
        Assert.Equal("16384\n", first.Queue.Attributes.Read("block/seq0/size"));
        Assert.Equal("8192\n", second.Queue.Attributes.Read("block/seq1/size"));
        Assert.Equal("0\n", first.Queue.Attributes.Read("block/seq0/ro"));
        Assert.Equal("1\n", second.Queue.Attributes.Read("block/seq1/ro"));
        var refused = await Assert.ThrowsAsync<ActorBlk.Hardware.Sysfs.AttributeException>(() => first.Queue.Attributes.WriteAsync("block/seq0/diskseq", "1").AsTask());
        Assert.Equal(ActorBlk.Hardware.Sysfs.AttributeErrno.EACCES, refused.Errno);
    }

    [Theory]
    [InlineData("ActorBlk null device d0, 512-byte blocks, diskseq 42@" + BootA, true, 42ul)]
    [InlineData("diskseq 7@" + BootA + " and more", true, 7ul)]
    [InlineData("no identity here", false, 0ul)]
    [InlineData("diskseq @" + BootA, false, 0ul)]
    [InlineData("diskseq -1@" + BootA, false, 0ul)]
    [InlineData("diskseq 7@0123456789ABCDEF0123456789ABCDEF", false, 0ul)]
    [InlineData("diskseq 7@0123", false, 0ul)]
    [InlineData("diskseq 99999999999999999999999@" + BootA, false, 0ul)]
    [InlineData("", false, 0ul)]
    public void An_identity_is_found_only_when_it_is_well_formed(string text, bool found, ulong seq)
    {
        Assert.Equal(found, DiskSequence.TryParseIdentity(text, out var parsed, out var boot));
        Assert.Equal(seq, parsed);
        Assert.Equal(found ? BootA : string.Empty, boot);
        Assert.True(DiskSequence.TryParseIdentity(DiskSequence.Identity(3), out var own, out var ownBoot));
        Assert.Equal(3ul, own);
        Assert.Equal(DiskSequence.BootId, ownBoot);
    }

    [Theory]
    [InlineData("diskseq 6@" + BootA)]
    [InlineData("ActorBlk file device d, 4096-byte blocks, diskseq 900@" + BootA)]
    public async Task A_reconnect_to_another_device_of_the_same_server_process_is_refused_and_the_driver_given_up(string reconnected)
    {
        await using var server = new FakeNbdServer(
            i => FakeNbdExport.Default with { Description = i == 0 ? "ActorBlk null device d, 512-byte blocks, diskseq 5@" + BootA : reconnected },
            s => s.ServeAsync(0));
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "ident0", Driver = "nbd", Uri = server.Uri() }, CpuTopology.Simulated(2));
        var driver = (NbdClientDriver)device.Queue.Driver;
        Assert.True((driver.Features & DriverFeatures.Reopenable) != 0);

        var refused = Assert.Throws<BlockDeviceErrorException>(() => driver.Reopen());
        Assert.True(refused.DeviceGone);
        Assert.Contains("is another device now", refused.Message, StringComparison.Ordinal);
        Assert.Contains("diskseq 5@" + BootA, refused.Message, StringComparison.Ordinal);
        Assert.Equal(0, driver.LiveConnections);

        // Given up: supervision takes the device offline at once, and no later attempt connects.
        Assert.NotNull(driver.RetiredReason);
        Assert.True((driver.Features & DriverFeatures.Reopenable) == 0);
        var accepted = server.Accepted;
        Assert.Throws<BlockDeviceErrorException>(() => driver.Reopen());
        Assert.Equal(accepted, server.Accepted);
        Assert.Empty(server.Faults);
    }

    // The same device again, a restarted server (another boot id: a file device serves the same
    // data again, as the kernel's nbd-client reconnects to it), or a server that sends no identity
    // (nbdkit, qemu-nbd): the reconnect is taken, as before.
    [Theory]
    [InlineData("diskseq 5@" + BootA)]
    [InlineData("diskseq 1@" + BootB)]
    [InlineData(null)]
    [InlineData("a description without an identity")]
    public async Task A_reconnect_to_the_same_device_a_restarted_server_or_one_without_identity_is_taken(string? reconnected)
    {
        await using var server = new FakeNbdServer(
            i => FakeNbdExport.Default with { Description = i == 0 ? "diskseq 5@" + BootA : reconnected },
            s => s.ServeAsync(0x5a));
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "ident1", Driver = "nbd", Uri = server.Uri() }, CpuTopology.Simulated(2));
        var driver = (NbdClientDriver)device.Queue.Driver;

        driver.Reopen();
        Assert.Equal(1, driver.LiveConnections);
        Assert.Null(driver.RetiredReason);
        var back = new byte[4096];
        await device.ReadAsync(0, back).AsTask().WaitAsync(Condition.Timeout);
        Assert.All(back, b => Assert.Equal(0x5a, b));
    }

    // After a reconnect to a restarted server the device is the one that server names: a
    // re-creation there is refused as well (comparing with the first server's identity, whose boot
    // id no longer matches, would take it).
    [Fact]
    public async Task After_a_reconnect_to_a_restarted_server_a_device_created_again_there_is_refused()
    {
        string Named(int connection) => connection switch
        {
            0 => "diskseq 5@" + BootA,
            1 => "diskseq 1@" + BootB,
            _ => "diskseq 2@" + BootB,
        };
        await using var server = new FakeNbdServer(i => FakeNbdExport.Default with { Description = Named(i) }, s => s.ServeAsync(0));
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "ident3", Driver = "nbd", Uri = server.Uri() }, CpuTopology.Simulated(2));
        var driver = (NbdClientDriver)device.Queue.Driver;

        driver.Reopen();
        Assert.Null(driver.RetiredReason);
        var refused = Assert.Throws<BlockDeviceErrorException>(() => driver.Reopen());
        Assert.Contains($"diskseq 1@{BootB} was opened, the export is diskseq 2@{BootB}", refused.Message, StringComparison.Ordinal);
        Assert.NotNull(driver.RetiredReason);
    }

    // A review: with several connections, those a refused reconnect had already replaced stayed
    // open on a driver that no longer reconnects (nothing else would have closed them).
    [Fact]
    public async Task A_reconnect_refused_on_a_later_connection_closes_the_ones_already_replaced()
    {
        await using var server = new FakeNbdServer(
            i => FakeNbdExport.Default with { Flags = FakeNbdExport.Default.Flags | NbdTransmissionFlags.CanMultiConn, Description = i < 3 ? "diskseq 5@" + BootA : "diskseq 6@" + BootA },
            s => s.ServeAsync(0));
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "ident4", Driver = "nbd", Uri = server.Uri(), SubmitQueues = 2, Connections = 2 }, CpuTopology.Simulated(2));
        var driver = (NbdClientDriver)device.Queue.Driver;
        Assert.Equal(2, driver.LiveConnections);

        // An I/O from each CPU, so that both hardware queues run and their connections start.
        await device.ReadAsync(0, new byte[4096], cpu: 0).AsTask().WaitAsync(Condition.Timeout);
        await device.ReadAsync(0, new byte[4096], cpu: 1).AsTask().WaitAsync(Condition.Timeout);

        var refused = Assert.Throws<BlockDeviceErrorException>(() => driver.Reopen());
        Assert.Contains("is another device now", refused.Message, StringComparison.Ordinal);
        Assert.NotNull(driver.RetiredReason);
        await Condition.EventuallyAsync(() => driver.LiveConnections == 0, "every connection closed");
    }

    // discard_max_bytes = 0 on an exported device: its export keeps the trim it advertised (a trim
    // is advisory, and taking it away refused every client's reconnect, a review found), and a trim
    // then succeeds doing nothing.
    [Fact]
    public async Task Turning_discard_off_on_an_exported_device_keeps_its_clients_reconnecting_and_makes_trims_no_ops()
    {
        await using var devices = new RingDevices(2);
        var backing = devices.Create(new DeviceOptions { Name = "trim0", Size = 16 << 20, MemoryBacked = true, Discard = true }, CpuTopology.Simulated(2));
        await using var server = NbdServer.Start(new NbdDeviceList([backing]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) });
        var client = devices.Create(new DeviceOptions { Name = "trimc", Driver = "nbd", Uri = $"nbd://127.0.0.1:{server.LocalEndPoint.Port}/trim0" }, CpuTopology.Simulated(2));
        var driver = (NbdClientDriver)client.Queue.Driver;
        var data = new byte[4096];
        Array.Fill(data, (byte)0x3c);
        await client.WriteAsync(0, data).AsTask().WaitAsync(Condition.Timeout);

        await backing.Queue.Attributes.WriteAsync("block/trim0/queue/discard_max_bytes", "0");
        driver.Reopen();
        Assert.Null(driver.RetiredReason);
        await client.DiscardAsync(0, 4096).AsTask().WaitAsync(Condition.Timeout);
        var back = new byte[4096];
        await client.ReadAsync(0, back).AsTask().WaitAsync(Condition.Timeout);
        Assert.Equal(data, back);
        Assert.Equal(0ul, backing.Queue.Stats.Read().DiscardIos);
    }

    [Fact]
    public async Task Connections_that_open_on_different_devices_fail_the_open()
    {
        await using var server = new FakeNbdServer(
            i => FakeNbdExport.Default with { Flags = FakeNbdExport.Default.Flags | NbdTransmissionFlags.CanMultiConn, Description = $"diskseq {5 + i}@" + BootA },
            s => s.ServeAsync(0));
        await using var devices = new RingDevices(2);
        var failed = Assert.Throws<BlockDeviceOpenException>(() => devices.Create(new DeviceOptions { Name = "ident2", Driver = "nbd", Uri = server.Uri(), SubmitQueues = 2, Connections = 2 }, CpuTopology.Simulated(2)));
        Assert.Contains("another device on another connection", failed.Message, StringComparison.Ordinal);
    }

    // End to end with ActorBlk's own server: the export name stays, the device behind it changes.
    [Fact]
    public async Task Our_server_names_each_device_so_a_client_tells_a_device_created_again_from_the_one_it_opened()
    {
        await using var devices = new RingDevices(2);
        var original = devices.Create(new DeviceOptions { Name = "mem0", Size = 16 << 20, MemoryBacked = true }, CpuTopology.Simulated(2));
        var catalog = new SwappableCatalog(original);
        await using var server = NbdServer.Start(catalog, new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) });
        var client = devices.Create(new DeviceOptions { Name = "client0", Driver = "nbd", Uri = $"nbd://127.0.0.1:{server.LocalEndPoint.Port}/mem0" }, CpuTopology.Simulated(2));
        var driver = (NbdClientDriver)client.Queue.Driver;
        var data = new byte[4096];
        Array.Fill(data, (byte)0xa7);
        await client.WriteAsync(0, data).AsTask().WaitAsync(Condition.Timeout);

        // The same device: the reconnect is taken and reads what was written.
        driver.Reopen();
        var back = new byte[4096];
        await client.ReadAsync(0, back).AsTask().WaitAsync(Condition.Timeout);
        Assert.Equal(data, back);

        // Another device under the same name (same size, same flags): refused, never read as zeros.
        catalog.Device = devices.Create(new DeviceOptions { Name = "mem0", Size = 16 << 20, MemoryBacked = true }, CpuTopology.Simulated(2));
        var refused = Assert.Throws<BlockDeviceErrorException>(() => driver.Reopen());
        Assert.Contains($"diskseq {original.Queue.DiskSeq}@{DiskSequence.BootId} was opened, the export is diskseq {catalog.Device.Queue.DiskSeq}@{DiskSequence.BootId}", refused.Message, StringComparison.Ordinal);
        Assert.NotNull(driver.RetiredReason);
    }

    // An outside audit: a client device that had not sent a request had no receiver yet (its
    // hardware queues were set up at the first dispatch), so a server that closed its connections
    // (the device destroyed) went unnoticed until then. Its queues are set up as it starts now.
    [Fact]
    public async Task A_client_that_never_sent_a_request_notices_the_server_closing_its_connections()
    {
        await using var devices = new RingDevices(2);
        var backing = devices.Create(new DeviceOptions { Name = "cold0", Size = 16 << 20, MemoryBacked = true }, CpuTopology.Simulated(2));
        await using var server = NbdServer.Start(new NbdDeviceList([backing]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) });
        var client = devices.Create(new DeviceOptions { Name = "coldc", Driver = "nbd", Uri = $"nbd://127.0.0.1:{server.LocalEndPoint.Port}/cold0", SubmitQueues = 2, Connections = 2 }, CpuTopology.Simulated(2));
        var driver = (NbdClientDriver)client.Queue.Driver;
        Assert.Equal(2, driver.LiveConnections);
        await Condition.EventuallyAsync(() => server.ConnectionCount == 2, "both connections transmitting");

        Assert.Equal(2, server.CloseConnectionsOf(backing));
        await Condition.EventuallyAsync(() => driver.LiveConnections == 0, "both connections found closed with no request sent");
    }

    private sealed class SwappableCatalog(IBlockDevice device) : INbdExportCatalog
    {
        public IBlockDevice Device { get; set; } = device;

        public IReadOnlyList<IBlockDevice> Exports => [Device];

        public bool TryGetExport(string name, out IBlockDevice device)
        {
            device = Device;
            return name.Length == 0 || name == Device.Name;
        }
    }
}
