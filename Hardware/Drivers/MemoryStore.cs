namespace ActorBlk.Hardware.Drivers;

/// <summary>
/// Sparse RAM storage for memory-backed devices (null_blk's <c>memory_backed</c>): 4 KiB pages
/// allocated on first write, unwritten or discarded ranges read back as zeroes.
/// </summary>
/// <remarks>
/// Two-level page table: directories of 4096 pages (16 MiB) created on demand, pages installed
/// with a compare-and-swap, so concurrent writers never lose a page. As on a real disk,
/// concurrent writes to the same bytes leave one of them, unspecified which.
/// </remarks>
public sealed class MemoryStore
{
    /// <summary>Page size in bytes.</summary>
    public const int PageSize = 4096;

    private const int PageShift = 12;
    private const int DirectoryShift = 12;
    private const int DirectorySize = 1 << DirectoryShift;

    private readonly byte[]?[]?[] _directories;
    private long _pages;

    /// <summary>Creates a store of <paramref name="capacityBytes"/> bytes; nothing is allocated yet.</summary>
    public MemoryStore(long capacityBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(capacityBytes);
        CapacityBytes = capacityBytes;
        var pages = (capacityBytes + PageSize - 1) >> PageShift;
        _directories = new byte[]?[]?[(pages + DirectorySize - 1) >> DirectoryShift];
    }

    /// <summary>Capacity in bytes.</summary>
    public long CapacityBytes { get; }

    /// <summary>Pages currently allocated.</summary>
    public long AllocatedPages => Interlocked.Read(ref _pages);

    /// <summary>Copies <c>destination.Length</c> bytes from <paramref name="offset"/>; holes read as zeroes.</summary>
    public void Read(long offset, Span<byte> destination)
    {
        CheckRange(offset, destination.Length);
        while (!destination.IsEmpty)
        {
            var inPage = (int)(offset & (PageSize - 1));
            var n = Math.Min(PageSize - inPage, destination.Length);
            var page = PageAt(offset >> PageShift, create: false);
            if (page is null)
            {
                destination[..n].Clear();
            }
            else
            {
                page.AsSpan(inPage, n).CopyTo(destination);
            }

            destination = destination[n..];
            offset += n;
        }
    }

    /// <summary>Copies <paramref name="source"/> to <paramref name="offset"/>.</summary>
    public void Write(long offset, ReadOnlySpan<byte> source)
    {
        CheckRange(offset, source.Length);
        while (!source.IsEmpty)
        {
            var inPage = (int)(offset & (PageSize - 1));
            var n = Math.Min(PageSize - inPage, source.Length);
            source[..n].CopyTo(PageAt(offset >> PageShift, create: true)!.AsSpan(inPage, n));
            source = source[n..];
            offset += n;
        }
    }

    /// <summary>Zeroes a range, freeing whole pages (discard and write-zeroes).</summary>
    public void Zero(long offset, long length) => ZeroRange(offset, length, provision: false);

    /// <summary>Zeroes a range and keeps it allocated (write-zeroes with <c>REQ_NOUNMAP</c>): no page is freed, missing ones are created.</summary>
    public void ZeroProvisioned(long offset, long length) => ZeroRange(offset, length, provision: true);

    private void ZeroRange(long offset, long length, bool provision)
    {
        CheckRange(offset, length);
        var end = offset + length;
        while (offset < end)
        {
            var inPage = (int)(offset & (PageSize - 1));
            var n = (int)Math.Min(PageSize - inPage, end - offset);
            var index = offset >> PageShift;
            if (!provision && inPage == 0 && n == PageSize)
            {
                FreePage(index);
            }
            else
            {
                PageAt(index, create: provision)?.AsSpan(inPage, n).Clear();
            }

            offset += n;
        }
    }

    /// <summary>
    /// Measures the run of same-state bytes that starts at <paramref name="offset"/>: allocated
    /// (a page exists) or a hole (no page; reads as zeroes). The run stops at the first page of
    /// the other state or after <paramref name="maxLength"/> bytes. Page granularity: a page
    /// partly zeroed by <see cref="Zero"/> stays allocated.
    /// </summary>
    /// <param name="offset">Start of the range.</param>
    /// <param name="maxLength">Longest run to report (positive).</param>
    /// <param name="allocated">Whether the run holds allocated pages.</param>
    /// <returns>Length of the run in bytes, from 1 to <paramref name="maxLength"/>.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The range lies outside the store or is empty.</exception>
    public long AllocationRun(long offset, long maxLength, out bool allocated)
    {
        CheckRange(offset, maxLength);
        ArgumentOutOfRangeException.ThrowIfZero(maxLength);
        var end = offset + maxLength;
        allocated = PageAt(offset >> PageShift, create: false) is not null;
        var index = (offset >> PageShift) + 1;
        var lastIndex = (end - 1) >> PageShift;
        while (index <= lastIndex)
        {
            var dir = Volatile.Read(ref _directories[index >> DirectoryShift]);
            if (dir is null)
            {
                if (allocated)
                {
                    break;
                }

                index = ((index >> DirectoryShift) + 1) << DirectoryShift; // a whole directory of holes
                continue;
            }

            if ((Volatile.Read(ref dir[index & (DirectorySize - 1)]) is not null) != allocated)
            {
                break;
            }

            index++;
        }

        return Math.Min(index << PageShift, end) - offset;
    }

    private byte[]? PageAt(long index, bool create)
    {
        ref var directory = ref _directories[index >> DirectoryShift];
        var dir = Volatile.Read(ref directory);
        if (dir is null)
        {
            if (!create)
            {
                return null;
            }

            dir = Interlocked.CompareExchange(ref directory, new byte[]?[DirectorySize], null) ?? directory!;
        }

        ref var slot = ref dir[index & (DirectorySize - 1)];
        var page = Volatile.Read(ref slot);
        if (page is not null || !create)
        {
            return page;
        }

        var fresh = new byte[PageSize];
        page = Interlocked.CompareExchange(ref slot, fresh, null);
        if (page is null)
        {
            Interlocked.Increment(ref _pages);
            return fresh;
        }

        return page;
    }

    private void FreePage(long index)
    {
        var dir = Volatile.Read(ref _directories[index >> DirectoryShift]);
        if (dir is not null && Interlocked.Exchange(ref dir[index & (DirectorySize - 1)], null) is not null)
        {
            Interlocked.Decrement(ref _pages);
        }
    }

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > CapacityBytes)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), offset, $"Range [{offset}, +{length}) lies outside the store's {CapacityBytes} bytes.");
        }
    }
}
