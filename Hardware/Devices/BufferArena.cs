using ActorBlk.Hardware.Interop;

namespace ActorBlk.Hardware.Devices;

/// <summary>
/// One page-aligned block of native memory that a device registers with the kernel once (io_uring
/// fixed buffers), carved into <see cref="AlignedBuffer"/>s page by page. I/O from registered
/// memory skips pinning the caller's pages on every request.
/// </summary>
/// <remarks>
/// Allocation is first-fit over a page bitmap under a lock: buffers are meant to be taken once per
/// in-flight slot and kept, not taken per I/O. The memory is freed when the arena is disposed and
/// every buffer has come back, whichever happens last, so a buffer never outlives its memory.
/// </remarks>
public sealed unsafe class BufferArena : IDisposable
{
    private const int Page = AlignedBuffer.PageAlignment;

    private readonly Lock _lock = new();
    private readonly ulong[] _used;
    private readonly int _pages;
    private byte* _memory;
    private int _outstanding;
    private bool _disposed;

    /// <summary>Reserves <paramref name="bytes"/> (rounded up to whole pages).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The size is not positive or above 1 GiB (the io_uring limit of one registered buffer).</exception>
    public BufferArena(long bytes)
    {
        if (bytes <= 0 || bytes > MaxBytes)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), bytes, $"The arena must hold 1 byte to {MaxBytes} bytes.");
        }

        _pages = (int)((bytes + Page - 1) / Page);
        Length = (long)_pages * Page;
        _used = new ulong[(_pages + 63) / 64];
        _memory = (byte*)NativeAllocations.AlignedAlloc((nuint)Length, Page);
    }

    /// <summary>The largest arena: one io_uring registered buffer may span at most 1 GiB.</summary>
    public const long MaxBytes = 1L << 30;

    /// <summary>Size in bytes (whole pages).</summary>
    public long Length { get; }

    /// <summary>Start of the memory, for registration.</summary>
    public nint Address => (nint)_memory;

    /// <summary>Buffers handed out and not yet returned.</summary>
    public int Outstanding
    {
        get
        {
            lock (_lock)
            {
                return _outstanding;
            }
        }
    }

    /// <summary>True when [<paramref name="pointer"/>, +<paramref name="length"/>) lies inside the arena.</summary>
    internal bool Contains(void* pointer, nuint length)
    {
        var start = (byte*)pointer;
        return start >= _memory && start + length <= _memory + Length;
    }

    /// <summary>A zero-filled buffer of <paramref name="length"/> bytes from the arena, or null when no run of free pages is long enough.</summary>
    public AlignedBuffer? TryAllocate(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        var pages = Math.Max(1, (length + Page - 1) / Page);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var run = 0;
            for (var p = 0; p < _pages; p++)
            {
                if ((_used[p >> 6] & (1UL << p)) != 0)
                {
                    run = 0;
                    continue;
                }

                if (++run == pages)
                {
                    var first = p - pages + 1;
                    Mark(first, pages, true);
                    _outstanding++;
                    return new AlignedBuffer(this, _memory + ((long)first * Page), length);
                }
            }

            return null;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            FreeIfUnused();
        }
    }

    internal void Return(byte* pointer, int length)
    {
        var first = (int)((pointer - _memory) / Page);
        var pages = Math.Max(1, (length + Page - 1) / Page);
        lock (_lock)
        {
            Mark(first, pages, false);
            _outstanding--;
            FreeIfUnused();
        }
    }

    private void Mark(int first, int pages, bool used)
    {
        for (var p = first; p < first + pages; p++)
        {
            if (used)
            {
                _used[p >> 6] |= 1UL << p;
            }
            else
            {
                _used[p >> 6] &= ~(1UL << p);
            }
        }
    }

    private void FreeIfUnused()
    {
        if (_disposed && _outstanding == 0 && _memory is not null)
        {
            NativeAllocations.AlignedFree(_memory, (nuint)Length);
            _memory = null;
        }
    }
}
