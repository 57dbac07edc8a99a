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

    [Theory]
    [InlineData(0L, 64L << 10)]
    [InlineData(4096L + 100, 30_000L)] // a query off the boundaries at both ends
    [InlineData(8192L, 4096L)]
    public async Task A_map_finer_than_the_block_size_is_answered_in_whole_blocks_with_holes_only_where_they_are(long offset, long length)
    {
        // A map answering in bytes (a remote one passes on another server's extents; nbdkit's are
        // bytes) on an export of 4096-byte blocks. "The server ... MUST use descriptor lengths
        // that are an integer multiple of any advertised minimum block size" (proto.md,
        // NBD_REPLY_TYPE_BLOCK_STATUS); the first and last descriptor of a query off the
        // boundaries are the exceptions. Before, the map's extents went out as they came:
        // 1000, 300, 2796, ... bytes.
        (long Start, long End)[] holes = [(0, 1000), (1300, 9000), (12_288, 16_384), (16_400, 16_401), (20_000, 40_960), (41_000, 65_536)];
        var device = Device("fine0", new FineMap(holes));
        Serve(device);
        var (client, _, _) = await RawNbdClient.OpenAsync(_server!.LocalEndPoint, "fine0", structured: true, allocation: true);
        await using var _ = client;

        var extents = await StatusAsync(client, 1, offset, length);
        var at = offset;
        for (var i = 0; i < extents.Length; i++)
        {
            var (size, flags) = extents[i];
            Assert.True(size > 0, $"extent {i} is empty");
            var stop = at + size;
            var last = i == extents.Length - 1;
            Assert.True(stop % 4096 == 0 || (last && stop == offset + length), $"extent {i} [{at}, {stop}) does not end on a block boundary");
            if (flags == HoleZero)
            {
                Assert.True(holes.Any(h => h.Start <= at && stop <= h.End), $"extent {i} [{at}, {stop}) is answered as a hole, and the map has data in it");
            }
            else
            {
                Assert.Equal(Data, flags);
            }

            at = stop;
        }

        Assert.Equal(offset + length, at);
        if (offset == 0)
        {
            // What whole blocks can say: [0, 4096) holds data (bytes 1000-1299), [4096, 8192) is
            // a hole, [8192, 12288) data (9000-12287), [12288, 16384) a hole, [16384, 20480) data
            // (the 1-byte hole at 16400 is inside a block of data), [20480, 40960) a hole,
            // [40960, 45056) data (40960-40999), [45056, 65536) a hole.
            Assert.Equal([(4096L, Data), (4096L, HoleZero), (4096L, Data), (4096L, HoleZero), (4096L, Data), (20_480L, HoleZero), (4096L, Data), (20_480L, HoleZero)], extents);
        }
    }

    private static async Task<(long Length, uint Flags)[]> StatusAsync(RawNbdClient client, ulong cookie, long offset, long length)
    {
        await client.SendRequestAsync(NbdCommand.BlockStatus, cookie, (ulong)offset, (uint)length, NbdCommandFlags.None);
        var chunk = await client.ReadChunkAsync();
        Assert.Equal((NbdChunkType.BlockStatus, cookie), (chunk.Type, chunk.Cookie));
        return [.. Enumerable.Range(0, (chunk.Data.Length - 4) / 8).Select(i =>
            ((long)BinaryPrimitives.ReadUInt32BigEndian(chunk.Data.AsSpan(4 + (8 * i))), BinaryPrimitives.ReadUInt32BigEndian(chunk.Data.AsSpan(8 + (8 * i)))))];
    }

    private BlockDevice Device(string name, IBioDriver map)
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

    // A bio-based device of 4096-byte blocks whose map answers byte-granular extents: holes
    // where it is told, data elsewhere.
    private sealed class FineMap((long Start, long End)[] holes) : IBioDriver, IAllocationMap
    {
        public QueueLimits Limits { get; } = new() { CapacitySectors = Size >> 9, LogicalBlockSize = 4096, PhysicalBlockSize = 4096 };

        public string Description => "a custom driver whose map answers in bytes";

        public void SubmitBio(RequestQueue queue, Bio bio) => queue.EndBio(bio, BlockStatus.Ok);

        public bool TryGetExtent(long offset, long maxLength, out long length, out bool allocated)
        {
            var hole = holes.FirstOrDefault(h => h.Start <= offset && offset < h.End);
            if (hole != default)
            {
                (length, allocated) = (Math.Min(hole.End - offset, maxLength), false);
                return true;
            }

            var next = holes.Where(h => h.Start > offset).Select(h => h.Start).DefaultIfEmpty(Size).Min();
            (length, allocated) = (Math.Min(next - offset, maxLength), true);
            return true;
        }

        public void Detach(RequestQueue queue)
        {
        }

        public void Dispose()
        {
        }
    }

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
