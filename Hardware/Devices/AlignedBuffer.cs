using System.Buffers;
using System.Numerics;
using System.Runtime.InteropServices;

namespace ActorBlk.Hardware.Devices;

/// <summary>
/// Native memory aligned for direct I/O (<c>NativeMemory.AlignedAlloc</c>), zero-filled, as a
/// <see cref="Memory{T}"/>. Pinning it costs nothing (it never moves), so a file device hands it
/// to the kernel without a bounce copy. Dispose it to free the memory, and not while an I/O uses it.
/// </summary>
public sealed unsafe class AlignedBuffer : MemoryManager<byte>
{
    /// <summary>The default alignment: a page, enough for O_DIRECT on every Linux file system and device.</summary>
    public const int PageAlignment = 4096;

    private byte* _pointer;

    /// <summary>Allocates <paramref name="length"/> bytes aligned to <paramref name="alignment"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The length is negative or the alignment not a power of two.</exception>
    public AlignedBuffer(int length, int alignment = PageAlignment)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (alignment < 1 || !BitOperations.IsPow2(alignment))
        {
            throw new ArgumentOutOfRangeException(nameof(alignment), alignment, "The alignment must be a power of two.");
        }

        Length = length;
        Alignment = alignment;
        _pointer = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(length, 1), (nuint)alignment);
        NativeMemory.Clear(_pointer, (nuint)length);
    }

    /// <summary>Allocates a buffer that <paramref name="device"/> takes without a copy (at least page-aligned).</summary>
    public static AlignedBuffer For(IBlockDevice device, int length)
    {
        ArgumentNullException.ThrowIfNull(device);
        return new AlignedBuffer(length, Math.Max(PageAlignment, device.MemoryAlignment));
    }

    /// <summary>Size in bytes.</summary>
    public int Length { get; }

    /// <summary>The alignment of the start address.</summary>
    public int Alignment { get; }

    /// <inheritdoc />
    public override Span<byte> GetSpan()
    {
        ObjectDisposedException.ThrowIf(_pointer is null, this);
        return new Span<byte>(_pointer, Length);
    }

    /// <inheritdoc />
    public override MemoryHandle Pin(int elementIndex = 0)
    {
        ObjectDisposedException.ThrowIf(_pointer is null, this);
        ArgumentOutOfRangeException.ThrowIfNegative(elementIndex);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(elementIndex, Length);
        return new MemoryHandle(_pointer + elementIndex);
    }

    /// <inheritdoc />
    public override void Unpin()
    {
    }

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        var pointer = _pointer;
        _pointer = null;
        if (pointer is not null)
        {
            NativeMemory.AlignedFree(pointer);
        }
    }
}
