using ActorBlk.Hardware.Tags;
using Xunit;

namespace ActorBlk.Hardware.Tests.Tags;

/// <summary>blk-mq-semantics §2.3.</summary>
public sealed class SBitmapSpec
{
    [Theory]
    [InlineData(64, 16, 4)]
    [InlineData(128, 32, 4)]
    [InlineData(1023, 64, 16)]
    [InlineData(31, 4, 8)]
    [InlineData(3, 64, 1)]
    public void Spreads_small_maps_over_at_least_four_words(int depth, int bitsPerWord, int words)
    {
        var map = new SBitmap(depth, cpuCount: 1);

        Assert.Equal(bitsPerWord, map.BitsPerWord);
        Assert.Equal(words, map.MapCount);
    }

    [Fact]
    public void Allocates_every_bit_once_then_reports_full()
    {
        var map = new SBitmap(64, cpuCount: 1, seed: 1);
        var bits = new HashSet<int>();
        for (var i = 0; i < 64; i++)
        {
            Assert.True(bits.Add(map.TryGet(0)));
        }

        Assert.Equal(-1, map.TryGet(0));
        Assert.Equal(64, map.Weight());
        Assert.Equal(Enumerable.Range(0, 64), bits.Order());
    }

    [Fact]
    public void A_freed_bit_becomes_the_freeing_cpus_hint_and_is_found_first()
    {
        // §15 "alloc hint": after CPU c frees tag t, c's hint == t and c's next allocation scans t's word first.
        var map = new SBitmap(64, cpuCount: 2, seed: 3);
        var taken = Enumerable.Range(0, 64).Select(_ => map.TryGet(0)).ToList();
        map.Clear(37, cpu: 1);

        Assert.Equal(37, map.HintOf(1));
        Assert.Equal(37, map.TryGet(1));
        Assert.Contains(37, taken);
    }

    [Fact]
    public void A_failed_allocation_resets_the_hint_to_zero()
    {
        var map = new SBitmap(16, cpuCount: 1, seed: 9);
        while (map.TryGet(0) >= 0)
        {
        }

        Assert.Equal(0, map.HintOf(0));
    }

    [Fact]
    public void Frees_are_deferred_until_an_allocator_finds_the_word_full()
    {
        var map = new SBitmap(64, cpuCount: 1, seed: 1);
        for (var i = 0; i < 64; i++)
        {
            map.TryGet(0);
        }

        map.Clear(5, cpu: 0);
        Assert.Equal(1, map.ClearedWeight());
        Assert.False(map.IsSet(5));

        Assert.Equal(5, map.TryGet(0));
        Assert.Equal(0, map.ClearedWeight());
    }

    [Fact]
    public void Round_robin_allocates_in_order()
    {
        var map = new SBitmap(8, cpuCount: 1, roundRobin: true);

        Assert.Equal([0, 1, 2, 3], Enumerable.Range(0, 4).Select(_ => map.TryGet(0)));
        map.Clear(1, cpu: 0);
        Assert.Equal(4, map.TryGet(0));
    }

    [Fact]
    public void Concurrent_allocators_never_share_a_bit()
    {
        var map = new SBitmap(128, cpuCount: 4, seed: 5);
        var owner = new int[128];
        var errors = 0;
        Parallel.For(0, 4, cpu =>
        {
            for (var i = 0; i < 20_000; i++)
            {
                var bit = map.TryGet(cpu);
                if (bit < 0)
                {
                    continue;
                }

                if (Interlocked.Exchange(ref owner[bit], cpu + 1) != 0)
                {
                    Interlocked.Increment(ref errors);
                }

                Volatile.Write(ref owner[bit], 0);
                map.Clear(bit, cpu);
            }
        });

        Assert.Equal(0, errors);
        Assert.Equal(0, map.Weight());
    }

    [Fact]
    public void Resize_shrinks_the_usable_depth()
    {
        var map = new SBitmap(64, cpuCount: 1, seed: 1);
        map.Resize(10);

        var got = Enumerable.Range(0, 20).Select(_ => map.TryGet(0)).Where(b => b >= 0).ToList();

        Assert.Equal(10, got.Count);
        Assert.All(got, b => Assert.InRange(b, 0, 9));
    }
}
