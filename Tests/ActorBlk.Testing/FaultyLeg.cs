using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Testing;

/// <summary>
/// A bio-based device in front of another that fails on command, for mirror specs: the whole
/// device can die (every I/O ends <see cref="BlockStatus.Offline"/>, or after a number of writes),
/// and a range can go bad for reads (<see cref="BlockStatus.Medium"/>) until it is written again,
/// as a disk remaps a sector on write. Counts what reaches the device below.
/// </summary>
public sealed class FaultyLeg : IBioDriver, IAllocationMap
{
    private readonly IBlockDevice _inner;
    private long _badStart = -1;
    private long _badEnd = -1;
    private long _writesLeft = long.MaxValue;
    private readonly TaskCompletionSource _hanging = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private FaultyLeg(IBlockDevice inner) => _inner = inner;

    /// <summary>
    /// Passes the device below's allocation map on while set (as a file leg's); otherwise the leg
    /// cannot tell its holes (as a remote leg).
    /// </summary>
    public bool ShowsMap { get; set; }

    /// <summary>The map throws while set (a custom driver's bug), whatever <see cref="ShowsMap"/> says.</summary>
    public bool MapThrows { get; set; }

    /// <summary>
    /// While set, the map's asynchronous questions (<see cref="GetExtentAsync"/>) are never
    /// answered, only given up by their cancellation token (a remote server that takes block status
    /// questions and stays silent); <see cref="MapQuestions"/> counts them.
    /// </summary>
    public bool MapHangs { get; set; }

    /// <summary>Questions asked through <see cref="GetExtentAsync"/>.</summary>
    public long MapQuestions;

    /// <summary>Completes when the first question is left unanswered (<see cref="MapHangs"/>).</summary>
    public Task MapHanging => _hanging.Task;

    /// <summary>Every I/O fails with Offline while set.</summary>
    public bool Dead { get; set; }

    /// <summary>While set, every write-zeroes ends with this status without reaching the device below (a device that refuses or fails it).</summary>
    public BlockStatus? WriteZeroesStatus { get; set; }

    /// <summary>Reads passed on.</summary>
    public long Reads;

    /// <summary>Writes passed on.</summary>
    public long Writes;

    /// <summary>Bytes written at or beyond <see cref="CountFrom"/> (a mirror's data area).</summary>
    public long DataBytesWritten;

    /// <summary>Bytes zeroed (write-zeroes) at or beyond <see cref="CountFrom"/>.</summary>
    public long DataBytesZeroed;

    /// <summary>
    /// What reached the data area by writes and write-zeroes together: what a mirror's recovery
    /// put on the leg, which zeroes a chunk that reads as zeroes instead of writing it.
    /// </summary>
    public long DataBytesCopied => Interlocked.Read(ref DataBytesWritten) + Interlocked.Read(ref DataBytesZeroed);

    /// <summary>Flushes, discards and write-zeroes passed on.</summary>
    public long Flushes, Discards, WriteZeroes;

    /// <summary>Reads failed with Medium on the bad range.</summary>
    public long ReadErrors;

    /// <summary>Where <see cref="DataBytesWritten"/> starts counting.</summary>
    public long CountFrom { get; set; }

    /// <inheritdoc />
    public QueueLimits Limits => _inner.Queue.Limits;

    /// <inheritdoc />
    public string Description => "faulty over " + _inner.Name;

    /// <summary>The device below.</summary>
    public IBlockDevice Inner => _inner;

    /// <summary>A registered bio-based device named <paramref name="name"/> over <paramref name="inner"/>, and its fault switch.</summary>
    public static (BlockDevice Device, FaultyLeg Faults) Create(string name, IBlockDevice inner, int cpus = 2)
    {
        var faults = new FaultyLeg(inner);
        return (BioDevices.Create(name, faults, cpus), faults);
    }

    /// <summary>
    /// The next write of exactly [<paramref name="offset"/>, + <paramref name="length"/>) waits for
    /// <paramref name="release"/> and then ends with its status, reaching the device only if that
    /// is Ok. The task returned completes when the write has arrived.
    /// </summary>
    public Task HoldWrite(long offset, int length, Task<BlockStatus> release)
    {
        var arrived = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Volatile.Write(ref _hold, new Hold(BlockOp.Write, offset, length, release, arrived));
        return arrived.Task;
    }

    /// <summary>
    /// The next flush waits for <paramref name="release"/> and then ends with its status, as
    /// <see cref="HoldWrite"/> does for a write. The task returned completes when the flush has arrived.
    /// </summary>
    public Task HoldFlush(Task<BlockStatus> release)
    {
        var arrived = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Volatile.Write(ref _hold, new Hold(BlockOp.Flush, 0, 0, release, arrived));
        return arrived.Task;
    }

    private sealed record Hold(BlockOp Op, long Offset, int Length, Task<BlockStatus> Release, TaskCompletionSource Arrived);

    private Hold? _hold;

    /// <summary>The next <paramref name="reads"/> reads fail with <see cref="BlockStatus.Medium"/> (a transient read error).</summary>
    public void FailNextReads(long reads) => Interlocked.Exchange(ref _readsToFail, reads);

    private long _readsToFail;

    /// <summary>Dies after <paramref name="writes"/> more writes.</summary>
    public void DieAfterWrites(long writes) => Interlocked.Exchange(ref _writesLeft, writes);

    /// <summary>Reads overlapping [<paramref name="offset"/>, + <paramref name="length"/>) fail until the range is written.</summary>
    public void BadRange(long offset, long length)
    {
        Volatile.Write(ref _badStart, offset);
        Volatile.Write(ref _badEnd, offset + length);
    }

    /// <summary>True while a bad range is set.</summary>
    public bool HasBadRange => Volatile.Read(ref _badStart) >= 0;

    /// <inheritdoc />
    public void SubmitBio(RequestQueue queue, Bio bio)
    {
        var overlapsBad = bio.Offset < Volatile.Read(ref _badEnd) && Volatile.Read(ref _badStart) < bio.Offset + bio.Size;
        if (bio.Op.IsWrite() && Interlocked.Decrement(ref _writesLeft) < 0)
        {
            Dead = true;
        }

        if (Dead)
        {
            queue.EndBio(bio, BlockStatus.Offline);
            return;
        }

        if (bio.Op == BlockOp.WriteZeroes && WriteZeroesStatus is { } refused)
        {
            queue.EndBio(bio, refused);
            return;
        }

        if (Volatile.Read(ref _hold) is { } hold && hold.Op == bio.Op && (bio.Op == BlockOp.Flush || (hold.Offset == bio.Offset && hold.Length == bio.Size))
            && Interlocked.CompareExchange(ref _hold, null, hold) == hold)
        {
            hold.Arrived.SetResult();
            _ = hold.Release.ContinueWith(
                t =>
                {
                    if (t.Result == BlockStatus.Ok)
                    {
                        Pass(queue, bio, overlapsBad: false);
                    }
                    else
                    {
                        queue.EndBio(bio, t.Result);
                    }
                },
                TaskScheduler.Default);
            return;
        }

        Pass(queue, bio, overlapsBad);
    }

    private void Pass(RequestQueue queue, Bio bio, bool overlapsBad)
    {
        switch (bio.Op)
        {
            case BlockOp.Read when overlapsBad || (Volatile.Read(ref _readsToFail) > 0 && Interlocked.Decrement(ref _readsToFail) >= 0):
                Interlocked.Increment(ref ReadErrors);
                queue.EndBio(bio, BlockStatus.Medium);
                return;
            case BlockOp.Read:
                Interlocked.Increment(ref Reads);
                break;
            case BlockOp.Write:
                Interlocked.Increment(ref Writes);
                if (bio.Offset >= CountFrom)
                {
                    Interlocked.Add(ref DataBytesWritten, bio.Size);
                }

                if (overlapsBad)
                {
                    Volatile.Write(ref _badStart, -1);
                    Volatile.Write(ref _badEnd, -1);
                }

                break;
            case BlockOp.Flush:
                Interlocked.Increment(ref Flushes);
                break;
            case BlockOp.Discard:
                Interlocked.Increment(ref Discards);
                break;
            case BlockOp.WriteZeroes:
                Interlocked.Increment(ref WriteZeroes);
                if (bio.Offset >= CountFrom)
                {
                    Interlocked.Add(ref DataBytesZeroed, bio.Size);
                }

                break;
        }

        try
        {
            _inner.SubmitWithEndIo(bio.Op, bio.Offset, bio.Op == BlockOp.Flush ? 0 : bio.Size, bio.Op.HasData() ? bio.Buffer : default,
                bio.Flags & ~RequestFlags.NoMerge, bio.Cpu, new EndIo(queue, bio));
        }
        catch (InvalidBlockRequestException)
        {
            queue.EndBio(bio, BlockStatus.IoError);
        }
    }

    /// <inheritdoc />
    public void Detach(RequestQueue queue)
    {
    }

    /// <inheritdoc />
    public bool TryGetExtent(long offset, long maxLength, out long length, out bool allocated)
    {
        if (MapThrows)
        {
            throw new InvalidOperationException("a custom driver's map that throws");
        }

        if (ShowsMap && IAllocationMap.Of(_inner) is { } map)
        {
            return map.TryGetExtent(offset, maxLength, out length, out allocated);
        }

        (length, allocated) = (maxLength, true);
        return false;
    }

    /// <inheritdoc />
    public async ValueTask<AllocationExtent?> GetExtentAsync(long offset, long maxLength, CancellationToken cancellationToken = default)
    {
        Interlocked.Increment(ref MapQuestions);
        if (MapHangs)
        {
            // Given up by the asker: null, as the NBD client driver answers a question given up.
            _hanging.TrySetResult();
            var givenUp = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            await using (cancellationToken.Register(() => givenUp.TrySetResult()))
            {
                await givenUp.Task.ConfigureAwait(false);
            }

            return null;
        }

        return TryGetExtent(offset, maxLength, out var length, out var allocated) ? new AllocationExtent(length, allocated) : null;
    }

    /// <inheritdoc />
    public void Dispose()
    {
    }

    private sealed class EndIo(RequestQueue queue, Bio bio) : IBioEndIo
    {
        public void OnBioComplete(Bio piece, BlockStatus status) => queue.EndBio(bio, status);
    }
}
