using ActorBlk.Hardware.Drivers;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers;

public sealed class MemoryStoreSpec
{
    [Fact]
    public void Unwritten_ranges_read_as_zeroes_and_allocate_nothing()
    {
        var store = new MemoryStore(250L << 30);
        var buffer = Enumerable.Repeat((byte)0xFF, 8192).ToArray();

        store.Read(100L << 30, buffer);

        Assert.All(buffer, b => Assert.Equal(0, b));
        Assert.Equal(0, store.AllocatedPages);
    }

    [Fact]
    public void Writes_spanning_pages_read_back()
    {
        var store = new MemoryStore(1 << 20);
        var data = Enumerable.Range(0, 10_000).Select(i => (byte)i).ToArray();

        store.Write(3000, data);
        var back = new byte[10_000];
        store.Read(3000, back);

        Assert.Equal(data, back);
        Assert.Equal(4, store.AllocatedPages);
    }

    [Fact]
    public void Zeroing_frees_whole_pages_and_clears_partial_ones()
    {
        var store = new MemoryStore(1 << 20);
        store.Write(0, Enumerable.Repeat((byte)7, 3 * MemoryStore.PageSize).ToArray());

        store.Zero(100, (2 * MemoryStore.PageSize) - 100);

        var back = new byte[3 * MemoryStore.PageSize];
        store.Read(0, back);
        Assert.All(back[..100], b => Assert.Equal(7, b));
        Assert.All(back[100..(2 * MemoryStore.PageSize)], b => Assert.Equal(0, b));
        Assert.All(back[(2 * MemoryStore.PageSize)..], b => Assert.Equal(7, b));
        Assert.Equal(2, store.AllocatedPages);
    }

    [Fact]
    public void Out_of_range_access_is_refused()
    {
        var store = new MemoryStore(4096);

        Assert.Throws<ArgumentOutOfRangeException>(() => store.Write(4000, new byte[200]));
        Assert.Throws<ArgumentOutOfRangeException>(() => store.Read(-1, new byte[1]));
    }
}
