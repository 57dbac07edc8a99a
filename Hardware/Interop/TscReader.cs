namespace ActorBlk.Hardware.Interop;

/// <summary>
/// <c>rdtsc</c> for managed code: .NET has no intrinsic for it, so one anonymous page is mapped,
/// written with the instructions, made read-and-execute (never writable and executable at once)
/// and called through an unmanaged function pointer that skips the GC transition (the routine
/// touches no memory and cannot block). x86-64 Linux only; the page is never unmapped.
/// </summary>
internal static unsafe class TscReader
{
    // rdtsc; shl rdx, 32; or rax, rdx; ret
    private static ReadOnlySpan<byte> Plain => [0x0F, 0x31, 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0, 0xC3];

    // lfence; rdtsc; shl rdx, 32; or rax, rdx; ret: the reading waits for the instructions before it
    private static ReadOnlySpan<byte> Fenced => [0x0F, 0xAE, 0xE8, 0x0F, 0x31, 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0, 0xC3];

    private const int FencedOffset = 64;

    private static nint s_page;

    /// <summary>The plain reader, or null with <paramref name="failure"/> when the page cannot be mapped executable.</summary>
    public static delegate* unmanaged[SuppressGCTransition]<ulong> Create(out string? failure)
    {
        var page = Page(out failure);
        return page == 0 ? null : (delegate* unmanaged[SuppressGCTransition]<ulong>)page;
    }

    /// <summary>The reader with an <c>lfence</c> before <c>rdtsc</c> (for comparison in the micro-benchmarks).</summary>
    public static delegate* unmanaged[SuppressGCTransition]<ulong> CreateFenced(out string? failure)
    {
        var page = Page(out failure);
        return page == 0 ? null : (delegate* unmanaged[SuppressGCTransition]<ulong>)(page + FencedOffset);
    }

    private static nint Page(out string? failure)
    {
        failure = null;
        var existing = Volatile.Read(ref s_page);
        if (existing != 0)
        {
            return existing;
        }

        if (!OperatingSystem.IsLinux() || System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture != System.Runtime.InteropServices.Architecture.X64)
        {
            failure = "not x86-64 Linux";
            return 0;
        }

        const nuint size = 4096;
        var p = LibC.MMap(null, size, LibC.PROT_READ | LibC.PROT_WRITE, LibC.MAP_PRIVATE | LibC.MAP_ANONYMOUS, -1, 0);
        if (p == (void*)-1)
        {
            failure = $"mmap of the code page failed (errno {LibC.LastErrno})";
            return 0;
        }

        Plain.CopyTo(new Span<byte>(p, FencedOffset));
        Fenced.CopyTo(new Span<byte>((byte*)p + FencedOffset, FencedOffset));
        if (LibC.MProtect(p, size, LibC.PROT_READ | LibC.PROT_EXEC) != 0)
        {
            failure = $"mprotect of the code page to read and execute failed (errno {LibC.LastErrno})";
            _ = LibC.MUnmap(p, size);
            return 0;
        }

        var mine = (nint)p;
        var winner = Interlocked.CompareExchange(ref s_page, mine, 0);
        if (winner != 0)
        {
            _ = LibC.MUnmap(p, size);
            return winner;
        }

        return mine;
    }
}
