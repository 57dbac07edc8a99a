using System.Buffers.Binary;
using System.Net;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// <see cref="IAllocationMap"/> is public, so a custom driver's map can break its contract: an
/// empty or negative extent, one past the range asked, an exception of its own. Block status
/// then still answers the protocol (extents of at least one byte within the request; what
/// cannot be told is data, which is always safe) and the connection goes on serving. Before, an
/// empty extent went on the wire (512 zero-length extents) and any exception but two ended the
/// connection's writer; a linear device over such a member passed a negative length on.
/// </summary>
public sealed class NbdBlockStatusMisbehavingMapSpec : IAsyncLifetime
{
    private const long Size = 1 << 20;
    private const uint Data = 0;
    private const uint HoleZero = (uint)(NbdAllocationFlags.Hole | NbdAllocationFlags.Zero);

    private readonly List<BlockDevice> _devices = [];
    private readonly System.Collections.Concurrent.ConcurrentQueue<string> _log = new();
    private NbdServer? _server;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (_server is not null)
        {
            await _server.DisposeAsync();
        }

        for (var i = _devices.Count - 1; i >= 0; i--)
        {
            await _devices[i].DisposeAsync();
        }
    }

    [Theory]
    [InlineData(0L, false, Data)]
    [InlineData(-4096L, false, Data)]
    [InlineData(long.MinValue, false, Data)]
    [InlineData(1L << 40, false, HoleZero)] // past the range: the rest of it, in the state given
    [InlineData(0L, true, Data)]
    public async Task A_custom_map_that_breaks_its_contract_gets_a_valid_reply_and_the_connection_goes_on(long length, bool throws, uint expected)
    {
        var map = new BrokenMap { Length = length, Throws = throws };
        var device = Device("custom0", map);
        var linear = Linear("dm-0", device);
        Serve(device, linear);

        foreach (var export in new[] { "custom0", "dm-0" })
        {
            var (client, _, _) = await RawNbdClient.OpenAsync(_server!.LocalEndPoint, export, structured: true, allocation: true);
            await using var _ = client;
            for (ulong cookie = 1; cookie <= 2; cookie++)
            {
                var extents = await StatusAsync(client, cookie, 4096, 64 << 10);
                Assert.Equal([(64L << 10, expected)], extents);
            }
        }

        // A map that threw is logged (the first failure, then a line a minute), or an export
        // answered as all data gives the operator no clue why.
        var failures = _log.Where(l => l.Contains("allocation map failed", StringComparison.Ordinal)).ToArray();
        Assert.Equal(
            throws ? ["NBD block status of custom0: its allocation map failed (InvalidOperationException: a custom driver's bug); the range was answered as data; 1 map failure(s) so far"] : [],
            failures);
    }

    private static async Task<(long Length, uint Flags)[]> StatusAsync(RawNbdClient client, ulong cookie, long offset, long length)
    {
        await client.SendRequestAsync(NbdCommand.BlockStatus, cookie, (ulong)offset, (uint)length, NbdCommandFlags.None);
        var chunk = await client.ReadChunkAsync();
        Assert.Equal((NbdChunkType.BlockStatus, cookie), (chunk.Type, chunk.Cookie));
        return [.. Enumerable.Range(0, (chunk.Data.Length - 4) / 8).Select(i =>
            ((long)BinaryPrimitives.ReadUInt32BigEndian(chunk.Data.AsSpan(4 + (8 * i))), BinaryPrimitives.ReadUInt32BigEndian(chunk.Data.AsSpan(8 + (8 * i)))))];
    }

    private BlockDevice Device(string name, BrokenMap map)
    {
        var device = BioDevices.Create(name, map);
        _devices.Add(device);
        return device;
    }

    private BlockDevice Linear(string name, IBlockDevice member)
    {
        var device = BioDevices.Create(name, new LinearTarget([new LinearExtent(member, 0, Size)]));
        _devices.Add(device);
        return device;
    }

    private void Serve(params IBlockDevice[] devices) =>
        _server = NbdServer.Start(new NbdDeviceList(devices), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) }, _log.Enqueue);

    // A bio-based device whose I/O succeeds and whose map answers what it is told to.
    private sealed class BrokenMap : IBioDriver, IAllocationMap
    {
        public long Length { get; init; }

        public bool Throws { get; init; }

        public QueueLimits Limits { get; } = new() { CapacitySectors = Size >> 9, LogicalBlockSize = 4096, PhysicalBlockSize = 4096 };

        public string Description => "a custom driver whose map breaks its contract";

        public void SubmitBio(RequestQueue queue, Bio bio)
        {
            if (bio.Op == BlockOp.Read)
            {
                bio.Buffer.Span.Clear();
            }

            queue.EndBio(bio, BlockStatus.Ok);
        }

        public bool TryGetExtent(long offset, long maxLength, out long length, out bool allocated)
        {
            if (Throws)
            {
                throw new InvalidOperationException("a custom driver's bug");
            }

            (length, allocated) = (Length, false);
            return true;
        }

        public void Detach(RequestQueue queue)
        {
        }

        public void Dispose()
        {
        }
    }
}
