using System.Net;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// Fast zero end to end (proto.md, "Zero writes"): an export advertises
/// <c>NBD_FLAG_SEND_FAST_ZERO</c> only for a device whose write-zeroes is fast, and an NBD client
/// device is fast only when its own server said so. Found from outside: an NBD-client device
/// re-exported by our server advertised fast zero although the driver could not forward it, so a
/// client asking "fail rather than zero slowly" could get a slow zeroing on the far server.
/// </summary>
public sealed class NbdFastZeroSpec
{
    private const NbdTransmissionFlags Zeroes = NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua | NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes;

    private static async Task<NbdTransmissionFlags> ReExportFlags(BlockDevice device)
    {
        await using var server = NbdServer.Start(new NbdDeviceList([device]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) }, _ => { });
        var (client, _, flags) = await RawNbdClient.OpenAsync(server.LocalEndPoint, device.Name);
        await client.DisposeAsync();
        return flags;
    }

    [Fact]
    public async Task A_client_device_whose_server_did_not_promise_fast_zero_is_re_exported_without_it()
    {
        await using var far = new FakeNbdServer(_ => FakeNbdExport.Default with { Flags = Zeroes }, s => s.ServeAsync(0));
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "slowzero", Driver = "nbd", Uri = far.Uri() }, CpuTopology.Simulated(2));

        Assert.True(device.Queue.Limits.MaxWriteZeroesSectors > 0);
        Assert.False(device.Queue.Limits.FastWriteZeroes);
        var flags = await ReExportFlags(device);
        Assert.Equal(NbdTransmissionFlags.SendWriteZeroes, flags & (NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.SendFastZero));

        // Asking it not to fall back is refused before anything goes to the far server.
        var refused = await Assert.ThrowsAsync<InvalidBlockRequestException>(() => device.ExecuteAsync(BlockOp.WriteZeroes, 0, 4096, default, RequestFlags.NoFallback).AsTask());
        Assert.Equal(InvalidRequestReason.NotSupported, refused.Reason);
        Assert.Contains("not fast", refused.Message, StringComparison.Ordinal);
        await device.WriteZeroesAsync(0, 4096).AsTask().WaitAsync(Condition.Timeout);
        Assert.Empty(far.Faults);
    }

    [Fact]
    public async Task A_client_device_over_a_fast_zero_server_forwards_the_flag_only_when_asked()
    {
        FakeNbdSession? session = null;
        await using var far = new FakeNbdServer(_ => FakeNbdExport.Default with { Flags = Zeroes | NbdTransmissionFlags.SendFastZero }, s =>
        {
            session = s;
            return s.ServeAsync(0);
        });
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "fastzero", Driver = "nbd", Uri = far.Uri() }, CpuTopology.Simulated(2));

        Assert.True(device.Queue.Limits.FastWriteZeroes);
        Assert.Equal(NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.SendFastZero,
            await ReExportFlags(device) & (NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.SendFastZero));

        await device.WriteZeroesAsync(0, 4096).AsTask().WaitAsync(Condition.Timeout);
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.WriteZeroes, 4096, 4096, default, RequestFlags.NoFallback).AsTask().WaitAsync(Condition.Timeout));

        var zeroes = session!.Received.Where(r => r.Command == NbdCommand.WriteZeroes).ToArray();
        Assert.Equal(2, zeroes.Length);
        Assert.Equal(NbdCommandFlags.None, zeroes[0].Flags & NbdCommandFlags.FastZero);
        Assert.Equal(NbdCommandFlags.FastZero, zeroes[1].Flags & NbdCommandFlags.FastZero);
        Assert.Empty(far.Faults);
    }

    [Fact]
    public async Task Our_server_refuses_fast_zero_it_did_not_advertise_and_forwards_it_as_no_fallback()
    {
        // A memory device zeroes fast: the export advertises it, and a FAST_ZERO request succeeds.
        await using var fx = NbdExportFixture.Start();
        var (client, _, flags) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using (client)
        {
            Assert.True((flags & NbdTransmissionFlags.SendFastZero) != 0);
            await client.SendRequestAsync(NbdCommand.WriteZeroes, 1, 0, 4096, NbdCommandFlags.FastZero);
            Assert.Equal(NbdError.None, (await client.ReadSimpleReplyAsync()).Error);
        }

        // Over a slow-zeroing NBD client device it is not advertised, and FAST_ZERO is EINVAL.
        await using var far = new FakeNbdServer(_ => FakeNbdExport.Default with { Flags = Zeroes }, s => s.ServeAsync(0));
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "slowzero", Driver = "nbd", Uri = far.Uri() }, CpuTopology.Simulated(2));
        await using var server = NbdServer.Start(new NbdDeviceList([device]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) }, _ => { });
        var (slow, _, _) = await RawNbdClient.OpenAsync(server.LocalEndPoint, "slowzero");
        await using (slow)
        {
            await slow.SendRequestAsync(NbdCommand.WriteZeroes, 2, 0, 4096, NbdCommandFlags.FastZero);
            Assert.Equal(NbdError.Invalid, (await slow.ReadSimpleReplyAsync()).Error);
            await slow.SendRequestAsync(NbdCommand.WriteZeroes, 3, 0, 4096);
            Assert.Equal(NbdError.None, (await slow.ReadSimpleReplyAsync()).Error);
        }
    }
}
