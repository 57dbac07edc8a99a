namespace ActorBlk.Hardware.Drivers.Stacking;

/// <summary>Options of a mirror (md's create-time and sysfs settings).</summary>
public sealed record MirrorOptions
{
    /// <summary>Default bytes per write-intent bitmap bit: 64 MiB, as mdadm chooses for large arrays.</summary>
    public const long DefaultRegionBytes = 64L << 20;

    /// <summary>Bytes of data per bitmap bit, a power of two from 64 KiB (fixed when the mirror is created; its legs' metadata wins afterwards).</summary>
    public long RegionBytes { get; init; } = DefaultRegionBytes;

    /// <summary>md's <c>sync_speed_min</c> in KiB/s (1000 by default).</summary>
    public long SyncSpeedMinKiB { get; init; } = 1000;

    /// <summary>md's <c>sync_speed_max</c> in KiB/s (200000 by default).</summary>
    public long SyncSpeedMaxKiB { get; init; } = 200_000;

    /// <summary>How often the bitmap daemon clears the bits of idle regions while every leg is in sync (md's <c>daemon_sleep</c>, 5 s).</summary>
    public TimeSpan BitmapDaemonInterval { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>For a new mirror: the legs are known to be equal (all zero), so no first resync (mdadm <c>--assume-clean</c>).</summary>
    public bool AssumeClean { get; init; }

    /// <summary>
    /// Start degraded without a leg that is missing (mdadm <c>--run</c>, DRBD's degraded start): a
    /// leg whose device is not there yet (<see cref="ActorBlk.Hardware.Devices.IReconnectingBlockDevice.IsMissing"/>,
    /// a remote member that did not appear in the cluster's registry) starts faulty instead of
    /// refusing the table, as long as a present leg carries the mirror's superblock with a leg in
    /// sync; it is re-added by itself when its device appears. Never creates a mirror: when no
    /// present leg holds the mirror's metadata the table is refused (the missing leg may be the
    /// only copy of the data). Off by default: a missing leg refuses the table.
    /// </summary>
    public bool StartDegraded { get; init; }

    /// <summary>
    /// How long a recovery waits, in real time, for its source's answer to whether a chunk is a
    /// hole (a remote leg asks NBD block status) before it reads the chunk instead: the question
    /// holds user I/O to the chunk. 5 s; specs shorten it.
    /// </summary>
    internal TimeSpan SourceMapPatience { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// For specs: called on the sync's thread once a pass's start is recorded
    /// (<see cref="MirrorTarget.CurrentSync"/>) and before <see cref="MirrorTarget.SyncStarted"/> is raised.
    /// </summary>
    internal Action<MirrorSyncStarted>? BeforeSyncStartedRaised { get; init; }

    /// <summary>Checks the values.</summary>
    /// <exception cref="ArgumentException">A value is out of range.</exception>
    public void Validate()
    {
        if (RegionBytes < MirrorTarget.SyncChunkBytes || (RegionBytes & (RegionBytes - 1)) != 0)
        {
            throw new ArgumentException($"region of {RegionBytes} bytes is not a power of two of at least {MirrorTarget.SyncChunkBytes >> 10} KiB.", nameof(RegionBytes));
        }

        if (BitmapDaemonInterval <= TimeSpan.Zero)
        {
            throw new ArgumentException($"bitmap daemon interval {BitmapDaemonInterval} is not positive.", nameof(BitmapDaemonInterval));
        }

        if (SyncSpeedMinKiB <= 0 || SyncSpeedMaxKiB < SyncSpeedMinKiB)
        {
            throw new ArgumentException($"sync speeds must satisfy 0 < min ({SyncSpeedMinKiB}) <= max ({SyncSpeedMaxKiB}) KiB/s.", nameof(SyncSpeedMaxKiB));
        }
    }
}
