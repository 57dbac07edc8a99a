using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Testing;

/// <summary>
/// A bio-based device in front of another that models a volatile write cache, for mirror specs:
/// every write reaches the device below at once (reads see it), but is durable only once a flush
/// (or a write with <see cref="RequestFlags.PreFlush"/>) has come after it, or when it is itself a
/// <see cref="RequestFlags.Fua"/> write, which makes that write durable and nothing else.
/// <see cref="PowerLossAsync"/> puts the durable image back over the device below, as a disk
/// losing its cache in a power loss. Discards and write-zeroes are cached writes of what they leave.
/// </summary>
public sealed class VolatileCacheLeg : IBioDriver
{
    private const int Sector = Bio.SectorSize;

    private readonly IBlockDevice _inner;
    private readonly object _lock = new();

    // What survives a power loss, and per sector what was written since but is not durable yet.
    private readonly byte[] _durable;
    private readonly Dictionary<long, byte[]> _cached = [];

    private VolatileCacheLeg(IBlockDevice inner, byte[] durable)
    {
        _inner = inner;
        _durable = durable;
    }

    /// <summary>Flushes (and pre-flushes) that reached the device.</summary>
    public long Flushes;

    /// <inheritdoc />
    public QueueLimits Limits => _inner.Queue.Limits;

    /// <inheritdoc />
    public string Description => "volatile cache over " + _inner.Name;

    /// <summary>Bytes written and not durable yet (lost by a power loss now).</summary>
    public long CachedBytes
    {
        get
        {
            lock (_lock)
            {
                return (long)_cached.Count * Sector;
            }
        }
    }

    /// <summary>
    /// A registered bio-based device named <paramref name="name"/> over <paramref name="inner"/>
    /// (which must advertise a volatile write cache, so flushes reach it), and its cache; what
    /// <paramref name="inner"/> holds now is durable.
    /// </summary>
    public static async Task<(BlockDevice Device, VolatileCacheLeg Cache)> CreateAsync(string name, IBlockDevice inner, int cpus = 2)
    {
        ArgumentNullException.ThrowIfNull(inner);
        if (!inner.Queue.Limits.VolatileWriteCache)
        {
            throw new ArgumentException($"{inner.Name} has no volatile write cache: flushes would not reach the model.", nameof(inner));
        }

        var durable = new byte[inner.Capacity];
        for (long at = 0; at < durable.Length; at += 256 << 10)
        {
            await inner.ReadAsync(at, durable.AsMemory((int)at, (int)Math.Min(256 << 10, durable.Length - at)));
        }

        var cache = new VolatileCacheLeg(inner, durable);
        return (BioDevices.Create(name, cache, cpus), cache);
    }

    /// <summary>
    /// The power goes: every write not durable is gone, and the device below holds the durable
    /// image again. Call it with no I/O in flight on the device.
    /// </summary>
    public async Task PowerLossAsync()
    {
        byte[] image;
        lock (_lock)
        {
            _cached.Clear();
            image = [.. _durable];
        }

        for (long at = 0; at < image.Length; at += 256 << 10)
        {
            await _inner.WriteAsync(at, image.AsMemory((int)at, (int)Math.Min(256 << 10, image.Length - at)), RequestFlags.Fua);
        }
    }

    /// <inheritdoc />
    public void SubmitBio(RequestQueue queue, Bio bio) => _ = RunAsync(queue, bio);

    private async Task RunAsync(RequestQueue queue, Bio bio)
    {
        var status = BlockStatus.IoError;
        try
        {
            // A flush makes durable what completed before it arrived.
            if (bio.Op == BlockOp.Flush || (bio.Flags & RequestFlags.PreFlush) != 0)
            {
                Interlocked.Increment(ref Flushes);
                lock (_lock)
                {
                    foreach (var (sector, data) in _cached)
                    {
                        data.CopyTo(_durable.AsSpan((int)(sector * Sector)));
                    }

                    _cached.Clear();
                }
            }

            status = await _inner.ExecuteAsync(bio.Op, bio.Offset, bio.Op == BlockOp.Flush ? 0 : bio.Size, bio.Op.HasData() ? bio.Buffer : default,
                bio.Flags & ~RequestFlags.NoMerge, bio.Cpu);
            if (status == BlockStatus.Ok && bio.Op is BlockOp.Write or BlockOp.Discard or BlockOp.WriteZeroes)
            {
                var data = new byte[bio.Size];
                if (bio.Op == BlockOp.Write)
                {
                    bio.Buffer.Span[..bio.Size].CopyTo(data);
                }
                else
                {
                    await _inner.ReadAsync(bio.Offset, data);
                }

                Record(bio.Offset, data, durable: bio.Op == BlockOp.Write && (bio.Flags & RequestFlags.Fua) != 0);
            }
        }
        catch (InvalidBlockRequestException)
        {
            status = BlockStatus.IoError;
        }
        finally
        {
            queue.EndBio(bio, status);
        }
    }

    private void Record(long offset, byte[] data, bool durable)
    {
        lock (_lock)
        {
            for (var b = 0; b < data.Length; b += Sector)
            {
                var sector = (offset + b) / Sector;
                if (durable)
                {
                    // FUA: this write is on the medium; what the cache held for its sectors is overwritten.
                    data.AsSpan(b, Sector).CopyTo(_durable.AsSpan((int)(offset + b)));
                    _cached.Remove(sector);
                }
                else
                {
                    _cached[sector] = data.AsSpan(b, Sector).ToArray();
                }
            }
        }
    }

    /// <inheritdoc />
    public void Detach(RequestQueue queue)
    {
    }

    /// <inheritdoc />
    public void Dispose()
    {
    }
}
