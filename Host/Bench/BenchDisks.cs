using System.Diagnostics;
using ActorBlk.Hardware.Interop;
using ActorBlk.Hardware.Queues;

namespace ActorBlk.Host.Bench;

/// <summary>
/// One disk's figures over a run, as fio 3.33 keeps them (diskutil.h <c>disk_util_stats</c>,
/// diskutil.c <c>update_io_tick_disk</c>): the differences of <c>/sys/block/DEV/stat</c>'s first
/// eleven fields between two readings, and <paramref name="Msec"/> the milliseconds between them.
/// </summary>
/// <param name="ReadIos">Reads completed (field 1).</param>
/// <param name="WriteIos">Writes completed (field 5).</param>
/// <param name="ReadMerges">Reads merged (field 2).</param>
/// <param name="WriteMerges">Writes merged (field 6).</param>
/// <param name="ReadTicks">Milliseconds spent reading (field 4).</param>
/// <param name="WriteTicks">Milliseconds spent writing (field 8).</param>
/// <param name="IoTicks">Milliseconds with I/O in flight (field 10).</param>
/// <param name="TimeInQueue">Weighted milliseconds (field 11), fio's <c>in_queue</c>.</param>
/// <param name="Msec">The milliseconds the figures cover.</param>
internal readonly record struct DiskUtilStats(
    ulong ReadIos, ulong WriteIos, ulong ReadMerges, ulong WriteMerges, ulong ReadTicks, ulong WriteTicks, ulong IoTicks, ulong TimeInQueue, ulong Msec)
{
    /// <summary>
    /// fio's <c>util</c> (stat.c <c>print_disk_util</c>): <c>100 * io_ticks / msec</c>, 0 without
    /// a millisecond, at most 100.
    /// </summary>
    public double Util => Msec == 0 ? 0 : Math.Min(100.0, 100.0 * IoTicks / Msec);

    /// <summary>The figures from <paramref name="before"/> to <paramref name="after"/> over <paramref name="msec"/> ms, fio's unsigned differences.</summary>
    public static DiskUtilStats Between(DiskStatSample before, DiskStatSample after, ulong msec) => unchecked(new(
        after.ReadIos - before.ReadIos, after.WriteIos - before.WriteIos,
        after.ReadMerges - before.ReadMerges, after.WriteMerges - before.WriteMerges,
        after.ReadTicks - before.ReadTicks, after.WriteTicks - before.WriteTicks,
        after.IoTicks - before.IoTicks, after.TimeInQueue - before.TimeInQueue, msec));
}

/// <summary>
/// A disk of fio's <c>disk_list</c> and, for one with slaves (a dm or md device), fio's
/// aggregate of them (stat.c <c>aggregate_slaves_stats</c>).
/// </summary>
/// <param name="Name">The disk's sysfs name (vda, dm-0).</param>
/// <param name="Stats">Its figures.</param>
/// <param name="Slaves">Its slaves' figures; empty for a plain disk.</param>
internal sealed record DiskUtil(string Name, DiskUtilStats Stats, IReadOnlyList<DiskUtilStats> Slaves)
{
    /// <summary>A disk without slaves.</summary>
    public DiskUtil(string name, DiskUtilStats stats)
        : this(name, stats, [])
    {
    }

    /// <summary>
    /// fio's <c>disk_util_agg</c> of the slaves, each sum divided by their number as fio prints
    /// it, and the highest slave's util (at most 100); null without slaves.
    /// </summary>
    public (ulong ReadIos, ulong WriteIos, ulong ReadMerges, ulong WriteMerges, ulong ReadTicks, ulong WriteTicks, ulong TimeInQueue, double MaxUtil)? Aggregate
    {
        get
        {
            if (Slaves.Count == 0)
            {
                return null;
            }

            var n = (ulong)Slaves.Count;
            ulong Sum(Func<DiskUtilStats, ulong> of) => unchecked(Slaves.Aggregate(0UL, (total, s) => total + of(s)));

            // fio: (double)(100 * io_ticks / (double)msec), the largest kept; NaN (0 / 0) never is.
            var max = 0.0;
            foreach (var s in Slaves)
            {
                var util = 100.0 * s.IoTicks / s.Msec;
                if (util > max)
                {
                    max = util;
                }
            }

            return (Sum(s => s.ReadIos) / n, Sum(s => s.WriteIos) / n, Sum(s => s.ReadMerges) / n, Sum(s => s.WriteMerges) / n,
                Sum(s => s.ReadTicks) / n, Sum(s => s.WriteTicks) / n, Sum(s => s.TimeInQueue) / n, Math.Min(max, 100.0));
        }
    }
}

/// <summary>
/// fio's disk utilisation for a job's file (diskutil.c): the disk the file lives on, found from
/// the file's device number (<c>lstat</c>: <c>st_rdev</c> of a block device, <c>st_dev</c> of
/// anything else but a character device or FIFO, which have none) through
/// <c>/sys/dev/block/MAJ:MIN</c>; the parent disk for a partition (a <c>../queue</c> beside it), and
/// its slaves for a dm or md device (<c>slaves/</c>, each a disk of its own, a partition's disk for
/// a partition). <c>/sys/block/DEV/stat</c> is read when the watch
/// starts and at each <see cref="Read"/>. A file on a file system without a block device (tmpfs,
/// overlayfs, btrfs's anonymous devices), the null device and NBD exports: no disk, as fio prints
/// none.
/// </summary>
internal sealed class DiskWatch
{
    private readonly List<Disk> _disks;
    private readonly long _started;

    private DiskWatch(List<Disk> disks)
    {
        _disks = disks;
        _started = Stopwatch.GetTimestamp();
        foreach (var disk in _disks)
        {
            disk.Start = ReadStat(disk.StatPath) ?? default;
        }
    }

    /// <summary>The disks, in fio's order (each followed by its slaves).</summary>
    public IReadOnlyList<string> Names => [.. _disks.Select(d => d.Name)];

    /// <summary>
    /// Watches the disk <paramref name="path"/> lives on (its directory's, when it does not exist),
    /// reading their statistics now; null when it lives on none.
    /// </summary>
    public static DiskWatch? Start(string path, string sysfs = "/sys")
    {
        ArgumentNullException.ThrowIfNull(path);
        return DeviceNumbers(path) is var (major, minor) ? Of(major, minor, sysfs) : null;
    }

    /// <summary>Watches the disks of device <paramref name="major"/>:<paramref name="minor"/> under <paramref name="sysfs"/>; null when it has none.</summary>
    /// <remarks>
    /// A sysfs the walk cannot read (a link that cannot be resolved, a <c>slaves/</c> directory
    /// that cannot be listed) costs the report its disk section, never the run: the walk ran
    /// after the devices were made, and an exception skipped their teardown (a review).
    /// </remarks>
    internal static DiskWatch? Of(uint major, uint minor, string sysfs)
    {
        try
        {
            return Disks(major, minor, sysfs) is { Count: > 0 } disks ? new DiskWatch(disks) : null;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Each disk's figures since the watch started, in fio's order.</summary>
    public IReadOnlyList<DiskUtil> Read()
    {
        // fio's msec: the whole milliseconds since the disk was added (it sums its 250 ms updates').
        var msec = (ulong)Stopwatch.GetElapsedTime(_started).TotalMilliseconds;
        var now = _disks.ToDictionary(d => d, d => DiskUtilStats.Between(d.Start, ReadStat(d.StatPath) ?? d.Start, msec));
        return [.. _disks.Select(d => new DiskUtil(d.Name, now[d], [.. d.Slaves.Select(s => now[s])]))];
    }

    /// <summary>
    /// fio's <c>get_device_numbers</c>: the device number of <paramref name="path"/> as
    /// <c>lstat</c> gives it (a symbolic link is the link's own, on the file system it lies in, as
    /// fio's), that of its directory when it does not exist; null for a character device or FIFO.
    /// </summary>
    internal static unsafe (uint Major, uint Minor)? DeviceNumbers(string path)
    {
        var st = default(LibC.Statx);
        if (LibC.StatX(LibC.AT_FDCWD, path, LibC.AT_SYMLINK_NOFOLLOW, LibC.STATX_BASIC_STATS, &st) != 0)
        {
            var directory = Path.GetDirectoryName(Path.GetFullPath(path));
            if (directory is null || LibC.StatX(LibC.AT_FDCWD, directory, 0, LibC.STATX_BASIC_STATS, &st) != 0)
            {
                return null;
            }

            return (st.DevMajor, st.DevMinor);
        }

        return (st.Mode & LibC.S_IFMT) switch
        {
            LibC.S_IFBLK => (st.RdevMajor, st.RdevMinor),
            LibC.S_IFCHR or LibC.S_IFIFO => null,
            _ => (st.DevMajor, st.DevMinor),
        };
    }

    /// <summary>
    /// The disks of device <paramref name="major"/>:<paramref name="minor"/> under
    /// <paramref name="sysfs"/>, in fio's <c>disk_list</c> order: the disk (a partition's parent),
    /// then its slaves, each followed by its own; empty when sysfs has no such block device.
    /// </summary>
    internal static List<Disk> Disks(uint major, uint minor, string sysfs)
    {
        var disks = new List<Disk>();
        var link = Path.Combine(sysfs, "dev", "block", $"{major}:{minor}");
        if (!Directory.Exists(link))
        {
            return disks;
        }

        Add(disks, DiskDirectory(new DirectoryInfo(link).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? link));
        return disks;
    }

    // fio's __init_per_file_disk_util: a block device's directory with a ../queue beside it is a
    // partition, whose disk is the directory above.
    private static string DiskDirectory(string directory) =>
        Directory.Exists(Path.Combine(directory, "..", "queue")) ? Path.GetDirectoryName(directory)! : directory;

    // fio's disk_util_add: a disk whose name is listed already is that one; a new one is listed,
    // then its slaves (find_add_disk_slaves), each a disk of the list and one of its slaves.
    private static Disk Add(List<Disk> disks, string directory)
    {
        var name = Path.GetFileName(directory);
        if (disks.Find(d => d.Name == name) is { } listed)
        {
            return listed;
        }

        var disk = new Disk(name, Path.Combine(directory, "stat"));
        disks.Add(disk);
        var slaves = Path.Combine(directory, "slaves");
        if (Directory.Exists(slaves))
        {
            foreach (var entry in Directory.EnumerateFileSystemEntries(slaves).Order(StringComparer.Ordinal))
            {
                // A partition stands for its disk, as the file's own device does.
                var target = DiskDirectory(new DirectoryInfo(entry).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? entry);
                if (disks.Exists(d => d.Name == Path.GetFileName(target)))
                {
                    continue; // listed already (fio's disk_util_exists)
                }

                disk.Slaves.Add(Add(disks, target));
            }
        }

        return disk;
    }

    private static DiskStatSample? ReadStat(string path)
    {
        try
        {
            return DiskStatSample.Parse(File.ReadAllText(path));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException)
        {
            // fio's get_io_ticks failing: the disk keeps its last figures.
            return null;
        }
    }

    /// <summary>A disk of the list: its name, its stat file, its slaves and its reading at the start.</summary>
    internal sealed class Disk(string name, string statPath)
    {
        public string Name { get; } = name;

        public string StatPath { get; } = statPath;

        public List<Disk> Slaves { get; } = [];

        public DiskStatSample Start { get; set; }
    }
}
