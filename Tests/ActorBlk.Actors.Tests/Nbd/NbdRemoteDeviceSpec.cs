using System.Net;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests.Nbd;

/// <summary>
/// A device on an NBD server under the block layer's supervision: a lost connection is a device
/// that is gone, reopened with back-off (the requests retried), and a server that stays gone
/// turns the device offline with Offline errors, never a hang.
/// </summary>
public sealed class NbdRemoteDeviceSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(60);

    // AwaitConditionAsync polls every tenth of its limit unless told otherwise (seconds here).
    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(10);

    private static readonly Config Supervised = ConfigurationFactory.ParseString("""
        akka.loglevel = WARNING
        akka.test.single-expect-default = 20s
        actorblk.topology { source = simulated, simulated.cpus = 2 }
        actorblk.supervision {
          reopen-backoff-min = 50ms
          reopen-backoff-max = 200ms
          reopen-attempts = 3
          max-reopens = 5
        }
        """);

    public NbdRemoteDeviceSpec(ITestOutputHelper output)
        : base(Supervised, output: output)
    {
    }

    private static NbdServer Serve(IBlockDevice device, int port = 0) =>
        NbdServer.Start(new NbdDeviceList([device]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, port) });

    [Fact]
    public async Task A_server_that_comes_back_is_reconnected_and_the_data_is_read_again()
    {
        await using var devices = new RingDevices(2);
        var backing = devices.Create(new DeviceOptions { Name = "mem0", Size = 16 << 20, MemoryBacked = true }, ActorBlk.Hardware.Topology.CpuTopology.Simulated(2));
        var server = Serve(backing);
        var port = server.LocalEndPoint.Port;
        var layer = BlockLayer.Get(Sys);
        var remote = await layer.CreateDeviceAsync(new DeviceOptions { Name = "remote0", Driver = "nbd", Uri = $"nbd://127.0.0.1:{port}/mem0", IoTimeoutMs = 5000 });
        var data = Enumerable.Repeat((byte)0x77, 4096).ToArray();
        await remote.WriteAsync(8192, data);

        // The server goes away and comes back on the same port.
        await server.DisposeAsync();
        server = Serve(backing, port);
        try
        {
            var back = new byte[4096];
            await AwaitAssertAsync(async () =>
            {
                var status = await remote.ExecuteAsync(BlockOp.Read, 8192, 4096, back).AsTask().WaitAsync(Liveness);
                Assert.Equal(BlockStatus.Ok, status);
            }, Liveness, TimeSpan.FromMilliseconds(50));
            Assert.Equal(data, back);
            await AwaitConditionAsync(() => Task.FromResult(server.ConnectionCount == 1), Liveness, Poll);
        }
        finally
        {
            await layer.DestroyDeviceAsync("remote0");
            await server.DisposeAsync();
        }
    }

    // Found from outside: a device entry of a node's configuration (`driver = nbd`) on an export
    // the server marks read-only (NBD_FLAG_READ_ONLY, `nbdkit -r`) was created writable, because
    // only the device builder, not the block layer's actor, looked at the driver's flag. Writes
    // went to the server and came back as EINVAL, and our own export re-exported it writable.
    [Fact]
    public async Task A_read_only_export_is_a_read_only_device_that_cannot_be_made_writable()
    {
        await using var devices = new RingDevices(2);
        var backing = devices.Create(new DeviceOptions { Name = "ro0", Size = 8 << 20, MemoryBacked = true, ReadOnly = true }, ActorBlk.Hardware.Topology.CpuTopology.Simulated(2));
        await using var server = Serve(backing);
        var layer = BlockLayer.Get(Sys);
        var remote = await layer.CreateDeviceAsync(new DeviceOptions { Name = "remote0", Driver = "nbd", Uri = $"nbd://127.0.0.1:{server.LocalEndPoint.Port}/ro0" });
        try
        {
            Assert.True(remote.IsReadOnly);
            Assert.Equal("1\n", layer.ReadAttribute("block/remote0/queue/read_only"));

            // Refused here with a typed reason, not sent to the server.
            var refused = await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await remote.WriteAsync(0, new byte[4096]));
            Assert.Equal(InvalidRequestReason.ReadOnly, refused.Reason);
            Assert.Equal(0UL, backing.Queue.Stats.Read().WriteIos);

            // The attribute cannot make it writable; nothing changes.
            var error = await Assert.ThrowsAsync<ActorBlk.Hardware.Sysfs.AttributeException>(async () => await layer.WriteAttributeAsync("block/remote0/queue/read_only", "0"));
            Assert.Equal(ActorBlk.Hardware.Sysfs.AttributeErrno.EINVAL, error.Errno);
            Assert.Contains("read-only", error.Reason, StringComparison.Ordinal);
            Assert.True(remote.IsReadOnly);
            await layer.WriteAttributeAsync("block/remote0/queue/read_only", "1");

            // Reads still work.
            var back = new byte[4096];
            await remote.ReadAsync(0, back);
        }
        finally
        {
            await layer.DestroyDeviceAsync("remote0");
        }
    }

    // A review found connections above the hardware queues (capped at the possible CPUs, as
    // blk-mq caps nr_hw_queues at nr_cpu_ids) opened and never used: the driver sends on its
    // queue's connection and, unlike Linux's nbd driver, never falls back to another. Now it opens
    // one per hardware queue and the log says so.
    [Fact]
    public async Task Connections_above_the_possible_cpus_are_reduced_to_one_per_hardware_queue_with_a_warning()
    {
        await using var devices = new RingDevices(2);
        var backing = devices.Create(new DeviceOptions { Name = "mem3", Size = 16 << 20, MemoryBacked = true }, ActorBlk.Hardware.Topology.CpuTopology.Simulated(2));
        await using var server = Serve(backing);
        var layer = BlockLayer.Get(Sys);
        IBlockDevice? remote = null;
        await EventFilter.Warning(contains: "remote3: connections 4 reduced to 2: one connection per hardware queue").ExpectOneAsync(async () =>
            remote = await layer.CreateDeviceAsync(new DeviceOptions { Name = "remote3", Driver = "nbd", Uri = $"nbd://127.0.0.1:{server.LocalEndPoint.Port}/mem3", Connections = 4 }));
        try
        {
            // Every connection the open made was negotiated before the create returned.
            Assert.Equal(2, server.ConnectionCount);
            Assert.Equal(2, ((BlockDevice)remote!).Queue.HardwareContexts.Count);
            await remote.WriteAsync(0, new byte[4096]);
        }
        finally
        {
            await layer.DestroyDeviceAsync("remote3");
        }
    }

    [Fact]
    public async Task A_server_that_stays_gone_turns_the_device_offline_with_offline_errors()
    {
        await using var devices = new RingDevices(2);
        var backing = devices.Create(new DeviceOptions { Name = "mem1", Size = 16 << 20, MemoryBacked = true }, ActorBlk.Hardware.Topology.CpuTopology.Simulated(2));
        var server = Serve(backing);
        var layer = BlockLayer.Get(Sys);
        var remote = await layer.CreateDeviceAsync(new DeviceOptions { Name = "remote1", Driver = "nbd", Uri = $"nbd://127.0.0.1:{server.LocalEndPoint.Port}/mem1", IoTimeoutMs = 5000 });
        await remote.WriteAsync(0, new byte[4096]);
        await server.DisposeAsync();

        // Every request completes: the ones issued while supervision reconnects are retried and
        // then failed, and once the device is offline each fails at once with Offline.
        await AwaitAssertAsync(async () =>
        {
            var status = await remote.ExecuteAsync(BlockOp.Read, 0, 4096, new byte[4096]).AsTask().WaitAsync(Liveness);
            Assert.Equal(BlockStatus.Offline, status);
        }, Liveness, TimeSpan.FromMilliseconds(50));
        Assert.Equal(BlockStatus.Offline, await remote.ExecuteAsync(BlockOp.Write, 4096, 4096, new byte[4096]).AsTask().WaitAsync(Liveness));
        await layer.DestroyDeviceAsync("remote1");
    }

    [Fact]
    public async Task A_retired_driver_takes_the_device_offline_without_reopening_even_while_the_server_answers()
    {
        await using var devices = new RingDevices(2);
        var backing = devices.Create(new DeviceOptions { Name = "mem2", Size = 16 << 20, MemoryBacked = true }, ActorBlk.Hardware.Topology.CpuTopology.Simulated(2));
        await using var server = Serve(backing);
        var layer = BlockLayer.Get(Sys);
        var remote = await layer.CreateDeviceAsync(new DeviceOptions { Name = "remote2", Driver = "nbd", Uri = $"nbd://127.0.0.1:{server.LocalEndPoint.Port}/mem2", IoTimeoutMs = 5000 });
        await remote.WriteAsync(0, new byte[4096]);
        var driver = Assert.IsType<ActorBlk.Hardware.Drivers.Nbd.NbdClientDriver>(remote.Queue.Driver);

        // Retired (its owner left the cluster): the connection closes and, not reopenable any
        // more, the device goes offline although the server would take it back.
        driver.Retire("the owner left");
        Assert.Equal("the owner left", driver.RetiredReason);
        Assert.Equal(ActorBlk.Hardware.Drivers.DriverFeatures.Resettable | ActorBlk.Hardware.Drivers.DriverFeatures.EagerHardwareContexts, driver.Features);
        await AwaitAssertAsync(async () =>
        {
            var status = await remote.ExecuteAsync(BlockOp.Read, 0, 4096, new byte[4096]).AsTask().WaitAsync(Liveness);
            Assert.Equal(BlockStatus.Offline, status);
        }, Liveness, TimeSpan.FromMilliseconds(50));
        Assert.True(remote.Queue.IsOffline);
        Assert.Throws<BlockDeviceErrorException>(() => driver.Reopen());
        await AwaitConditionAsync(() => Task.FromResult(server.ConnectionCount == 0), Liveness, Poll);
        await layer.DestroyDeviceAsync("remote2");
    }
}
