using ActorBlk.Hardware.Interop;
using System.Buffers;
using System.Numerics;
using System.Runtime.InteropServices;

namespace ActorBlk.Hardware.Devices;

/// <summary>
/// Native memory aligned for direct I/O, zero-filled, as a <see cref="Memory{T}"/>: either its own
/// allocation (<c>NativeMemory.AlignedAlloc</c>) or a piece of a device's registered memory (see
/// <see cref="IBlockDevice.AllocateBuffer"/>). Pinning it costs nothing (it never moves), so a file
/// device hands it to the kernel without a bounce copy. Dispose it to give the memory back, and
/// not while an I/O uses it.
/// </summary>
public sealed unsafe class AlignedBuffer : MemoryManager<byte>
{
    /// <summary>The default alignment: a page, enough for O_DIRECT on every Linux file system and device.</summary>
    public const int PageAlignment = 4096;

    private readonly BufferArena? _arena;
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
        _pointer = (byte*)NativeAllocations.AlignedAlloc((nuint)Math.Max(length, 1), (nuint)alignment);
        NativeMemory.Clear(_pointer, (nuint)length);
    }

    // A piece of an arena: page-aligned, handed back to the arena on dispose.
    internal AlignedBuffer(BufferArena arena, byte* pointer, int length)
    {
        _arena = arena;
        _pointer = pointer;
        Length = length;
        Alignment = PageAlignment;
        NativeMemory.Clear(pointer, (nuint)length);
    }

    /// <summary>A buffer that <paramref name="device"/> takes without a copy: <see cref="IBlockDevice.AllocateBuffer"/>.</summary>
    public static AlignedBuffer For(IBlockDevice device, int length)
    {
        ArgumentNullException.ThrowIfNull(device);
        return device.AllocateBuffer(length);
    }

    /// <summary>Size in bytes.</summary>
    public int Length { get; }

    /// <summary>The alignment of the start address.</summary>
    public int Alignment { get; }

    /// <summary>True when the memory is a piece of a device's registered memory.</summary>
    public bool IsRegistered => _arena is not null;

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
        if (pointer is null)
        {
            return;
        }

        if (_arena is not null)
        {
            _arena.Return(pointer, Length);
        }
        else
        {
            NativeAllocations.AlignedFree(pointer, (nuint)Math.Max(Length, 1));
        }
    }
}
