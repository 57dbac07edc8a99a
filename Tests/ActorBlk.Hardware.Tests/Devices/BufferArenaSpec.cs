using ActorBlk.Hardware.Devices;
using Xunit;

namespace ActorBlk.Hardware.Tests.Devices;

/// <summary>Registered memory carved into page-aligned buffers.</summary>
public sealed class BufferArenaSpec
{
    [Fact]
    public void Buffers_are_whole_pages_inside_the_arena_until_it_is_full()
    {
        using var arena = new BufferArena(5 * 4096);
        var a = arena.TryAllocate(4096)!;
        var b = arena.TryAllocate(5000)!;
        var c = arena.TryAllocate(1)!;

        Assert.Equal(5 * 4096, arena.Length);
        Assert.True(a.IsRegistered);
        Assert.Equal(5000, b.Length);
        Assert.Null(arena.TryAllocate(8192));
        Assert.NotNull(arena.TryAllocate(4096));
        Assert.Null(arena.TryAllocate(1));
        Assert.Equal(4, arena.Outstanding);
        GC.KeepAlive(c);
    }

    [Fact]
    public unsafe void A_returned_run_is_reused_first_fit_and_comes_back_zeroed()
    {
        using var arena = new BufferArena(4 * 4096);
        var a = arena.TryAllocate(8192)!;
        var b = arena.TryAllocate(8192)!;
        a.Memory.Span.Fill(0xAB);
        var first = (nint)a.Pin().Pointer;
        ((IDisposable)a).Dispose();

        var again = arena.TryAllocate(8192)!;
        Assert.Equal(first, (nint)again.Pin().Pointer);
        Assert.Equal(0, first % 4096);
        Assert.All(again.Memory.ToArray(), x => Assert.Equal(0, x));
        Assert.True(arena.Contains(again.Pin().Pointer, 8192));
        Assert.False(arena.Contains((byte*)again.Pin().Pointer + 8192 + (4 * 4096), 1));
        GC.KeepAlive(b);
    }

    [Fact]
    public void Disposing_the_arena_waits_for_outstanding_buffers()
    {
        var arena = new BufferArena(4096);
        var buffer = arena.TryAllocate(4096)!;
        arena.Dispose();

        // The buffer still works: its memory is freed only when it comes back.
        buffer.Memory.Span[0] = 1;
        Assert.Equal(1, arena.Outstanding);
        ((IDisposable)buffer).Dispose();
        Assert.Equal(0, arena.Outstanding);
        Assert.Throws<ObjectDisposedException>(() => arena.TryAllocate(1));
    }

    [Theory]
    [InlineData(0L)]
    [InlineData(-1L)]
    [InlineData((1L << 30) + 1)]
    public void Sizes_out_of_range_are_refused(long bytes) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => new BufferArena(bytes));
}
