using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;
using Xunit;

namespace ActorBlk.Hardware.Tests.Tags;

/// <summary>blk-mq-semantics §2.1, §2.2, §2.5 and §4.</summary>
public sealed class TagSetSpec
{
    private static readonly CpuTopology Four = CpuTopology.Simulated(4);

    [Fact]
    public void Depth_zero_is_rejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new TagSet(new TagSetOptions { QueueDepth = 0 }, Four));
    }

    [Fact]
    public void Zero_hardware_queues_are_rejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new TagSet(new TagSetOptions { HardwareQueues = 0 }, Four));
    }

    [Fact]
    public void Reserved_tags_must_leave_one_normal_tag()
    {
        // §15: depth 2 with 2 reserved -> EINVAL.
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => new TagSet(new TagSetOptions { QueueDepth = 2, ReservedTags = 2 }, Four));
        Assert.Contains("EINVAL", ex.Message);
    }

    [Fact]
    public void Depth_above_10240_is_clamped()
    {
        // §15: depth 20000 -> 10240.
        var set = new TagSet(new TagSetOptions { QueueDepth = 20000 }, Four);

        Assert.Equal(10240, set.QueueDepth);
        Assert.True(set.DepthWasClamped);
        Assert.Equal(10240, set.TagsOf(0).NrTags);
    }

    [Fact]
    public void Hardware_queues_are_clamped_to_the_possible_cpus()
    {
        Assert.Equal(4, new TagSet(new TagSetOptions { HardwareQueues = 9 }, Four).HardwareQueueCount);
    }

    [Fact]
    public void Reserved_tags_come_first()
    {
        // §15 "tag numbering": depth 64, reserved 2: first normal tag >= 2.
        var tags = new TagSet(new TagSetOptions { QueueDepth = 64, ReservedTags = 2, Seed = 1 }, Four).TagsOf(0);

        Assert.Equal(62, tags.BitmapTags.Depth);
        Assert.InRange(tags.TryGetNormal(0), 2, 63);
        Assert.InRange(tags.TryGetReserved(0), 0, 1);
        Assert.InRange(tags.TryGetReserved(0), 0, 1);
        Assert.Equal(-1, tags.TryGetReserved(0));
    }

    [Fact]
    public void Unique_tag_puts_the_hardware_queue_in_the_upper_16_bits()
    {
        Assert.Equal(0x30005u, UniqueTags.Make(3, 5));
        Assert.Equal(3, UniqueTags.HardwareQueueOf(0x30005));
        Assert.Equal(5, UniqueTags.TagOf(0x30005));
    }

    [Fact]
    public void Init_request_runs_once_per_request_of_each_hardware_queue()
    {
        var calls = new List<(Request, int)>();
        var set = new TagSet(new TagSetOptions { HardwareQueues = 3, QueueDepth = 16 }, Four, (rq, q) => calls.Add((rq, q)));

        Assert.Equal(48, calls.Count);
        Assert.Equal(16, calls.Count(c => c.Item2 == 2));
        Assert.Equal(48, calls.Select(c => c.Item1).Distinct().Count());
        Assert.Equal(3, set.AllTags.Count());
    }

    [Fact]
    public void Host_wide_tags_share_one_map_across_hardware_queues()
    {
        var set = new TagSet(new TagSetOptions { HardwareQueues = 3, QueueDepth = 16, Flags = TagSetFlags.HostWide }, Four);

        Assert.Same(set.TagsOf(0), set.TagsOf(2));
        Assert.Single(set.AllTags);
    }

    [Fact]
    public void Payloads_are_cache_line_elements_of_the_drivers_size()
    {
        // §4: each request carries cmd_size bytes, elements rounded up to a cache line.
        var tags = new TagSet(new TagSetOptions { QueueDepth = 8, PayloadSize = 40 }, Four).TagsOf(0);

        Assert.Equal(64, tags.PayloadStride);
        var addresses = new long[8];
        for (var t = 0; t < 8; t++)
        {
            Assert.Equal(40, tags[t].Payload.Length);
            Assert.True(System.Runtime.InteropServices.MemoryMarshal.TryGetArray<byte>(tags[t].Payload, out var segment));
            addresses[t] = (long)System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(segment.Array!, segment.Offset);
            Assert.Equal(0, addresses[t] % 64);
        }

        for (var t = 1; t < 8; t++)
        {
            Assert.Equal(64, addresses[t] - addresses[t - 1]);
        }
    }

    [Theory]
    [InlineData(128, 3, 43)]
    [InlineData(64, 32, 4)]
    [InlineData(62, 5, 13)]
    [InlineData(64, 1, 64)]
    public void Fair_share_is_ceil_depth_over_users_with_a_floor_of_4(int depth, int users, int share)
    {
        // §2.5 item 26.
        Assert.Equal(share, HardwareContext.FairShare(depth, users));
    }
}
