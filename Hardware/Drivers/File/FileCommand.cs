using System.Buffers;
using ActorBlk.Hardware.Interop;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers.File;

/// <summary>
/// The file driver's per-tag command (its <c>cmd_size</c> payload): the request in flight, its
/// bios' buffers pinned and described as an iovec array in native memory, and a bounce buffer
/// when a caller's memory does not meet the direct-I/O alignment.
/// </summary>
/// <remarks>
/// One command per tag and engine, created the first time the tag is used and reused after; the
/// hot path allocates nothing. Only the engine that issued the request touches its command until
/// it completes.
/// </remarks>
internal sealed unsafe class FileCommand : IDisposable
{
    /// <summary>Bounce buffers up to this size are kept for the next request of the tag; larger ones are freed.</summary>
    public const int BounceCacheLimit = 256 * 1024;

    private MemoryHandle[] _pins = new MemoryHandle[1];
    private LibC.IoVec* _iov;
    private int _iovCapacity;
    private int _iovFirst;
    private int _pinCount;
    private byte* _bounce;
    private nuint _bounceCapacity;
    private bool _bounced;

    /// <summary>The request this command carries, or null while the tag is idle.</summary>
    public Request? Request { get; private set; }

    /// <summary>The generation the request was started with (<see cref="Request.Complete(BlockStatus, uint)"/>).</summary>
    public uint Generation { get; private set; }

    /// <summary>File offset of the next byte to transfer.</summary>
    public long Position { get; private set; }

    /// <summary>Bytes still to transfer.</summary>
    public long Remaining { get; private set; }

    /// <summary>The error a linked pre-flush completed with; the request fails with it.</summary>
    public BlockStatus LinkStatus { get; set; }

    /// <summary>The iovecs still to transfer.</summary>
    public LibC.IoVec* Iov => _iov + _iovFirst;

    /// <summary>How many iovecs are still to transfer.</summary>
    public int IovCount { get; private set; }

    /// <summary>True when the data goes through a bounce buffer.</summary>
    public bool Bounced => _bounced;

    /// <summary>Takes <paramref name="rq"/>, already started, for its whole range.</summary>
    public void Begin(Request rq)
    {
        Request = rq;
        Generation = rq.Generation;
        Position = rq.Offset;
        Remaining = rq.Bytes;
        LinkStatus = BlockStatus.Ok;
        _iovFirst = 0;
        IovCount = 0;
        _pinCount = 0;
        _bounced = false;
    }

    /// <summary>
    /// Pins the buffers of a read or write and describes them as iovecs. When a buffer is not
    /// aligned to <paramref name="memoryAlignment"/>, the whole request goes through one aligned
    /// bounce buffer instead (filled now for a write, copied out at completion for a read).
    /// </summary>
    /// <returns><see cref="BlockStatus.Ok"/>, or <see cref="BlockStatus.Resource"/> when no bounce buffer could be allocated.</returns>
    public BlockStatus MapData(Request rq, int memoryAlignment)
    {
        var count = 0;
        foreach (var unused in rq.Bios)
        {
            count++;
        }

        EnsureCapacity(count);
        var mask = (nuint)(memoryAlignment - 1);
        var aligned = true;
        var i = 0;
        foreach (var bio in rq.Bios)
        {
            var pin = bio.Buffer.Pin();
            _pins[i] = pin;
            _iov[i] = new LibC.IoVec { Base = pin.Pointer, Length = (nuint)bio.Size };
            aligned &= ((nuint)pin.Pointer & mask) == 0;
            i++;
        }

        _pinCount = count;
        IovCount = count;
        if (aligned)
        {
            return BlockStatus.Ok;
        }

        if (!EnsureBounce((nuint)rq.Bytes, Math.Max(memoryAlignment, 4096)))
        {
            Unpin();
            return BlockStatus.Resource;
        }

        if (rq.Op == BlockOp.Write)
        {
            var at = 0;
            for (var j = 0; j < count; j++)
            {
                new ReadOnlySpan<byte>(_iov[j].Base, (int)_iov[j].Length).CopyTo(new Span<byte>(_bounce + at, (int)_iov[j].Length));
                at += (int)_iov[j].Length;
            }
        }

        Unpin();
        _iov[0] = new LibC.IoVec { Base = _bounce, Length = (nuint)rq.Bytes };
        IovCount = 1;
        _bounced = true;
        return BlockStatus.Ok;
    }

    /// <summary>Records a partial transfer of <paramref name="bytes"/>; the iovecs then describe the rest.</summary>
    public void Advance(long bytes)
    {
        Position += bytes;
        Remaining -= bytes;
        while (bytes > 0 && IovCount > 0)
        {
            ref var v = ref _iov[_iovFirst];
            if ((ulong)bytes >= v.Length)
            {
                bytes -= (long)v.Length;
                _iovFirst++;
                IovCount--;
            }
            else
            {
                v.Base = (byte*)v.Base + bytes;
                v.Length -= (nuint)bytes;
                bytes = 0;
            }
        }
    }

    /// <summary>
    /// Transfers what remains with preadv2/pwritev2 on the calling thread, looping over short
    /// transfers. A transfer that makes no progress (the backing file ends early) fails with
    /// <see cref="BlockStatus.IoError"/>.
    /// </summary>
    public BlockStatus TransferSync(int fd, BlockOp op, int rwFlags)
    {
        while (Remaining > 0)
        {
            var n = op == BlockOp.Read
                ? LibC.PReadV(fd, Iov, IovCount, Position)
                : LibC.PWriteV(fd, Iov, IovCount, Position, rwFlags);
            if (n == -LibC.EINTR)
            {
                continue;
            }

            if (n < 0)
            {
                return BlockStatusExtensions.FromErrno((int)n);
            }

            if (n == 0)
            {
                return BlockStatus.IoError;
            }

            Advance(n);
        }

        return BlockStatus.Ok;
    }

    /// <summary>
    /// Ends the command: copies a successful bounced read out to the bios, unpins, and forgets the
    /// request. Returns the request and its generation for completion.
    /// </summary>
    public (Request Request, uint Generation) End(BlockStatus status)
    {
        var rq = Request!;
        if (_bounced && status == BlockStatus.Ok && rq.Op == BlockOp.Read)
        {
            var at = 0;
            foreach (var bio in rq.Bios)
            {
                new ReadOnlySpan<byte>(_bounce + at, bio.Size).CopyTo(bio.Buffer.Span);
                at += bio.Size;
            }
        }

        Unpin();
        if (_bounceCapacity > BounceCacheLimit)
        {
            FreeBounce();
        }

        _bounced = false;
        Request = null;
        return (rq, Generation);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Unpin();
        FreeBounce();
        if (_iov is not null)
        {
            NativeAllocations.Free(_iov, (nuint)(_iovCapacity * sizeof(LibC.IoVec)));
            _iov = null;
            _iovCapacity = 0;
        }
    }

    private void Unpin()
    {
        for (var i = 0; i < _pinCount; i++)
        {
            _pins[i].Dispose();
            _pins[i] = default;
        }

        _pinCount = 0;
    }

    private void EnsureCapacity(int count)
    {
        if (count <= _iovCapacity)
        {
            return;
        }

        var capacity = Math.Max(count, Math.Max(4, _iovCapacity * 2));
        _iov = (LibC.IoVec*)NativeAllocations.Realloc(_iov, (nuint)(_iovCapacity * sizeof(LibC.IoVec)), (nuint)(capacity * sizeof(LibC.IoVec)));
        _iovCapacity = capacity;
        if (_pins.Length < capacity)
        {
            Array.Resize(ref _pins, capacity);
        }
    }

    private bool EnsureBounce(nuint size, int alignment)
    {
        if (_bounceCapacity >= size && ((nuint)_bounce & (nuint)(alignment - 1)) == 0)
        {
            return true;
        }

        FreeBounce();
        try
        {
            _bounce = (byte*)NativeAllocations.AlignedAlloc(size, (nuint)alignment);
        }
        catch (OutOfMemoryException)
        {
            return false;
        }

        _bounceCapacity = size;
        return true;
    }

    private void FreeBounce()
    {
        if (_bounce is not null)
        {
            NativeAllocations.AlignedFree(_bounce, _bounceCapacity);
            _bounce = null;
            _bounceCapacity = 0;
        }
    }
}
