using System.Globalization;
using System.Text;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Sysfs;

/// <summary>
/// Adds one attribute file: its path, how it shows (null for a write-only one, which a read
/// refuses with EACCES, as sysfs refuses to open an attribute without a show for reading) and,
/// when writable, how it stores (path, value).
/// </summary>
public delegate void AttributeAdder(string path, Func<string>? show, Func<string, string, ValueTask>? store);

/// <summary>
/// A bio-based driver with attributes of its own in the device's tree (md's <c>block/&lt;dev&gt;/md/</c>),
/// added each time the tree is built.
/// </summary>
public interface IAttributeSource
{
    /// <summary>Adds the driver's attributes under <paramref name="deviceDirectory"/> (<c>block/&lt;dev&gt;/</c>).</summary>
    void AddAttributes(string deviceDirectory, AttributeAdder add);
}

/// <summary>One attribute file: how it shows (null when write-only) and, when writable, how it stores.</summary>
internal sealed record AttributeFile(Func<string>? Show, Func<string, string, ValueTask>? Store);

/// <summary>
/// An immutable snapshot of one disk's attribute tree (blk-mq-semantics §11): built whole at
/// registration and after every re-map, then published with one reference swap, so a reader
/// sees the tree before or after a change and never one half built.
/// </summary>
/// <remarks>
/// Paths are those of the kernel, rooted at <c>/sys</c>:
/// <list type="bullet">
/// <item><c>block/&lt;dev&gt;/queue/{nr_requests, rq_affinity, io_poll, io_poll_delay, io_timeout, nomerges,
/// logical_block_size, physical_block_size, max_sectors_kb, max_hw_sectors_kb, read_only, rotational, hw_sector_size,
/// max_segments, discard_max_bytes, discard_max_hw_bytes, write_zeroes_max_bytes, write_cache, fua, dax, scheduler}</c>;</item>
/// <item><c>block/&lt;dev&gt;/stat</c> (the 17 fields of Documentation/block/stat.rst) and <c>block/&lt;dev&gt;/inflight</c> (<see cref="DiskStats"/>);</item>
/// <item><c>block/&lt;dev&gt;/mq/&lt;N&gt;/{nr_tags, nr_reserved_tags, cpu_list}</c> for mapped hardware queues only;</item>
/// <item><c>kernel/debug/block/&lt;dev&gt;/hctx&lt;N&gt;/{state, type, active, queued, run, dispatched, pending, tags}</c>
/// and <c>.../hctx&lt;N&gt;/cpu&lt;M&gt;/{dispatched, merged, completed, rq_list}</c> for each mapped context;</item>
/// <item><c>kernel/debug/block/&lt;dev&gt;/double_completions</c>: bio completions refused as second ones (<see cref="RequestQueue.DoubleCompletions"/>).</item>
/// </list>
/// Values read live; the layout is fixed for the snapshot's life.
/// </remarks>
public sealed class AttributeTree
{
    private readonly SortedDictionary<string, AttributeFile> _files;
    private readonly string[] _paths;
    private readonly Func<string, AttributeNode> _nodeAt;

    internal AttributeTree(SortedDictionary<string, AttributeFile> files, long version)
    {
        _files = files;
        Version = version;
        _paths = [.. files.Keys];
        _nodeAt = NodeAt;
    }

    /// <summary>Every attribute path of the snapshot, sorted.</summary>
    public IReadOnlyList<string> Paths => _paths;

    /// <summary>Counts the snapshots of one disk: each re-map publishes the next.</summary>
    public long Version { get; }

    /// <summary>True when the snapshot has <paramref name="path"/>.</summary>
    public bool Contains(string path) => _files.ContainsKey(path);

    /// <summary>
    /// Reads an attribute: at most one page (4095 characters). The path is looked up as the
    /// block layer's <c>ReadAttribute</c> looks it up (a leading <c>/sys/</c>, repeated slashes,
    /// <c>.</c> and <c>..</c>), within this device's tree.
    /// </summary>
    /// <exception cref="AttributeException">ENOENT: no such attribute; EISDIR: the path is a directory; ENOTDIR: a path through an attribute (<c>block/nullb0/size/</c>); EACCES: the attribute is write-only.</exception>
    public string Read(string path)
    {
        var (key, file) = Find(path);
        var show = file.Show ?? throw new AttributeException(key, AttributeErrno.EACCES, "the attribute is write-only");
        var text = show();
        return text.Length <= PageBuffer.Limit ? text : text[..PageBuffer.Limit];
    }

    /// <summary>
    /// Writes an attribute, the path looked up as <see cref="Read"/> looks it up. An empty value
    /// (zero bytes; not <c>"\n"</c>) is taken and changes nothing, as the kernel's
    /// <c>sysfs_kf_write</c> returns 0 without calling the store.
    /// </summary>
    /// <exception cref="AttributeException">ENOENT, EISDIR (a directory), ENOTDIR (a path through an attribute), EACCES (read-only, an empty value too), EINVAL (refused value) or ERANGE (a number past the attribute's type); nothing changed.</exception>
    public ValueTask WriteAsync(string path, string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        var (key, file) = Find(path);
        if (file.Store is null)
        {
            throw new AttributeException(key, AttributeErrno.EACCES, "the attribute is read-only");
        }

        // sysfs_kf_write: "if (!count) return 0;" after the open's permission check (EACCES above),
        // before the store. The empty value went to the store, which refused it (EINVAL).
        return value.Length == 0 ? ValueTask.CompletedTask : file.Store(key, value);
    }

    // The attribute a path names, looked up as the block layer looks a path up in the node's tree
    // (AttributePath: "/sys/", repeated slashes, "." and ".." within the tree, a "." or ".." only
    // after a directory), but in this snapshot alone: a path that leads to another device's tree,
    // or walks through its directories, names nothing here. Only surrounding slashes were dropped:
    // "/sys/block/nullb0/size" and "block/nullb0/queue/../size" were ENOENT, and
    // "block/nullb0/size/" read the size, where the node's tree says ENOTDIR.
    private (string Key, AttributeFile File) Find(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var key = AttributePath.Resolve(path, _nodeAt);
        if (path.EndsWith('/') && AttributePath.ThroughAFile(path, key, _nodeAt))
        {
            throw new AttributeException(key, AttributeErrno.ENOTDIR, "not a directory");
        }

        if (_files.TryGetValue(key, out var file))
        {
            return (key, file);
        }

        // A directory of the tree (block/<dev>/queue): EISDIR, as open(2) of a sysfs directory for
        // reading a file's text or for writing; it was ENOENT (an outside CLI fuzzing audit). The
        // empty path names nothing, as open("") is ENOENT; "/" is the root.
        throw path.Length > 0 && NodeAt(key) == AttributeNode.Directory ? new AttributeException(key, AttributeErrno.EISDIR, "is a directory")
            : AttributePath.ThroughAFile(path, key, _nodeAt) ? new AttributeException(key, AttributeErrno.ENOTDIR, "not a directory")
            : new AttributeException(key, AttributeErrno.ENOENT, "no such attribute");
    }

    // What the snapshot holds at a normalised path: the root, and each directory its paths go
    // through (block, block/<dev>, kernel/debug/block/<dev>/hctx0 ...), are directories.
    private AttributeNode NodeAt(string key) =>
        key.Length == 0 ? AttributeNode.Directory : _files.ContainsKey(key) ? AttributeNode.File : IsDirectory(key) ? AttributeNode.Directory : AttributeNode.None;

    // True when some attribute's path goes on under "key/". The paths are sorted ordinally, so the
    // first at or after "key/" is under it if any is.
    internal bool IsDirectory(string key)
    {
        if (key.Length == 0)
        {
            return false;
        }

        var directory = key + "/";
        var at = Array.BinarySearch(_paths, directory, StringComparer.Ordinal);
        at = at < 0 ? ~at : at;
        return at < _paths.Length && _paths[at].StartsWith(directory, StringComparison.Ordinal);
    }
}

/// <summary>
/// The attribute tree of one request queue: created when the queue registers, rebuilt after each
/// re-map, withdrawn when it unregisters (reads then fail with ENOENT, as on a dying queue).
/// </summary>
public sealed class QueueAttributes
{
    private readonly RequestQueue _queue;
    private AttributeTree? _current;
    private long _version;

    internal QueueAttributes(RequestQueue queue) => _queue = queue;

    /// <summary>The published snapshot, or null while the queue is not registered.</summary>
    public AttributeTree? Current => Volatile.Read(ref _current);

    /// <summary>The attribute paths of the current snapshot (empty while unregistered or dying).</summary>
    public IReadOnlyList<string> List() => Visible?.Paths ?? [];

    /// <summary>The snapshot readers see: null while the queue is unregistered or dying, when it lists nothing.</summary>
    internal AttributeTree? Visible => Current is { } tree && !_queue.IsDying ? tree : null;

    /// <summary>Reads an attribute of the current snapshot, the path looked up as <see cref="AttributeTree.Read"/> looks it up.</summary>
    /// <exception cref="AttributeException">ENOENT: no such attribute, or the queue is unregistered or dying; EISDIR: the path is a directory; ENOTDIR: a path through an attribute; EACCES: the attribute is write-only.</exception>
    public string Read(string path) => Live(path).Read(path);

    /// <summary>Writes an attribute of the current snapshot, the path looked up as <see cref="AttributeTree.Read"/> looks it up.</summary>
    /// <exception cref="AttributeException">ENOENT, EISDIR, ENOTDIR, EACCES, EINVAL or ERANGE; nothing changed.</exception>
    public ValueTask WriteAsync(string path, string value) => Live(path).WriteAsync(path, value);

    /// <summary>Builds the tree of the queue's current mapping and publishes it.</summary>
    internal void Publish() => Volatile.Write(ref _current, Build(Interlocked.Increment(ref _version)));

    /// <summary>Withdraws the tree.</summary>
    internal void Withdraw() => Volatile.Write(ref _current, null);

    private AttributeTree Live(string path) =>
        Visible ?? throw new AttributeException(path, AttributeErrno.ENOENT, $"{_queue.Name} is not registered");

    // ------------------------------------------------------------------ the layout

    private AttributeTree Build(long version)
    {
        var q = _queue;
        var files = new SortedDictionary<string, AttributeFile>(StringComparer.Ordinal);
        var queueDir = $"block/{q.Name}/queue/";
        void Add(string path, Func<string>? show, Func<string, string, ValueTask>? store = null) => files[path] = new AttributeFile(show, store);

        Add(queueDir + "nr_requests", () => Line(q.NrRequests), async (path, text) =>
        {
            var value = ParseUnsigned(path, text);
            if (q.Kind != QueueKind.MultiQueue)
            {
                throw new AttributeException(path, AttributeErrno.EINVAL, "a bio-based queue has no requests");
            }

            try
            {
                await q.SetNrRequestsAsync((long)value).ConfigureAwait(false);
            }
            catch (ArgumentOutOfRangeException ex)
            {
                throw new AttributeException(path, AttributeErrno.EINVAL, ex.Message.Split(" (Parameter")[0].Split('\n')[0]);
            }
        });

        // §6 item 1: 0, 1 and 2 set the flags; another number is accepted and changes nothing.
        Add(queueDir + "rq_affinity", () => Line((int)q.RqAffinity), (path, text) =>
        {
            var value = ParseUnsigned(path, text);
            if (value <= 2)
            {
                q.RqAffinity = (CompletionAffinity)value;
            }

            return ValueTask.CompletedTask;
        });

        // §7 item 7 [cur]: shows whether polling is possible; writes are ignored, EINVAL without the poll feature.
        Add(queueDir + "io_poll", () => Line(q.CanPoll ? 1 : 0), (path, text) =>
        {
            ParseUnsigned(path, text);
            if (q.Kind != QueueKind.MultiQueue || (q.Driver.Features & Drivers.DriverFeatures.Poll) == 0 || q.TagSet.PollQueues == 0)
            {
                throw new AttributeException(path, AttributeErrno.EINVAL, "the device cannot poll");
            }

            return ValueTask.CompletedTask;
        });

        // §7 item 7 [cur]: always -1; a write must be a number >= -1 (the hybrid-poll rule) and is then ignored.
        // queue_poll_delay_store parses with kstrtoint and returns its error: a number past an int is
        // ERANGE, not EINVAL (2147483648 was EINVAL; an outside CLI fuzzing audit).
        Add(queueDir + "io_poll_delay", () => "-1\n", (path, text) =>
        {
            if (KernelNumbers.ToInt32(text, out var delay) is { } errno)
            {
                throw new AttributeException(path, errno, errno == AttributeErrno.ERANGE
                    ? $"'{Chomp(text)}' is out of range: not an int (kstrtoint); a delay is -1 or 0 to {int.MaxValue} microseconds"
                    : $"'{Chomp(text)}' is not -1 or a delay in microseconds");
            }

            if (delay < -1)
            {
                throw new AttributeException(path, AttributeErrno.EINVAL, $"'{Chomp(text)}' is not -1 or a delay in microseconds");
            }

            return ValueTask.CompletedTask;
        });

        // §5 item 1: milliseconds, any u32 but 0 (§11.3 item 10); above int.MaxValue ms (24.8
        // days, which no request waits) it is held as int.MaxValue.
        Add(queueDir + "io_timeout", () => Line(q.IoTimeoutMs), (path, text) =>
        {
            var value = ParseUnsigned(path, text);
            if (value == 0)
            {
                throw new AttributeException(path, AttributeErrno.EINVAL, "a timeout of 0 ms");
            }

            q.IoTimeoutMs = (int)Math.Min(value, int.MaxValue);
            return ValueTask.CompletedTask;
        });

        // §3.2 item 4: 2 = no merges, any other non-zero = one-hit merges only, 0 = all.
        Add(queueDir + "nomerges", () => Line((int)q.MergePolicy), (path, text) =>
        {
            var value = ParseUnsigned(path, text);
            q.MergePolicy = value switch { 0 => MergePolicy.All, 2 => MergePolicy.Off, _ => MergePolicy.SimpleOnly };
            return ValueTask.CompletedTask;
        });

        Add(queueDir + "logical_block_size", () => Line(q.Limits.LogicalBlockSize));
        Add(queueDir + "physical_block_size", () => Line(q.Limits.PhysicalBlockSize));
        Add(queueDir + "max_hw_sectors_kb", () => Line(q.Limits.MaxHardwareSectors / 2));

        // §11.3 item 9, read-only: the limits as the kernel shows them (hw_sector_size is the
        // logical block size; the discard and write-zeroes limits in bytes, 0 when unsupported;
        // fua from the device's FUA support; no DAX).
        Add(queueDir + "hw_sector_size", () => Line(q.Limits.LogicalBlockSize));
        Add(queueDir + "max_segments", () => Line(q.Limits.MaxSegments));
        // queue_discard_max_store: a multiple of the discard granularity (the logical block size
        // here) up to the driver's limit, which a larger value is cut to; 0 turns discard off
        // (discards then fail with NotSupported, and a new NBD connection is offered no trim).
        Add(queueDir + "discard_max_bytes", () => Line((long)q.Limits.MaxDiscardSectors << Bio.SectorShift), (path, text) =>
        {
            // The kernel tests bytes & (granularity - 1): with no discard the granularity is 0, so
            // every value but 0 is EINVAL (an outside audit: 4096 was taken and read back as 0).
            var bytes = ParseUnsigned(path, text);
            var granularity = q.MaxHardwareDiscardSectors > 0 ? (ulong)q.Limits.LogicalBlockSize : 0;
            if (bytes != 0 && granularity == 0)
            {
                throw new AttributeException(path, AttributeErrno.EINVAL, $"{bytes}: the device does not discard (discard_granularity is 0)");
            }

            if (bytes != 0 && bytes % granularity != 0)
            {
                throw new AttributeException(path, AttributeErrno.EINVAL, $"{bytes} is not a multiple of the discard granularity ({granularity} bytes)");
            }

            q.SetMaxDiscardSectors((int)Math.Min(bytes >> Bio.SectorShift, int.MaxValue));
            return ValueTask.CompletedTask;
        });
        Add(queueDir + "discard_max_hw_bytes", () => Line((long)q.MaxHardwareDiscardSectors << Bio.SectorShift));
        Add(queueDir + "discard_granularity", () => Line(q.MaxHardwareDiscardSectors > 0 ? q.Limits.LogicalBlockSize : 0));
        Add(queueDir + "write_zeroes_max_bytes", () => Line((long)q.Limits.MaxWriteZeroesSectors << Bio.SectorShift));

        // queue_wc_store: "write back" turns the cache on (a device without one stays "write
        // through"), "write through" or "none" off: flushes then complete at once and FUA is
        // dropped. Compared as prefixes, as the kernel's strncmp does; anything else is EINVAL.
        Add(queueDir + "write_cache", () => q.WriteCache ? "write back\n" : "write through\n", (path, text) =>
        {
            if (text.StartsWith("write back", StringComparison.Ordinal))
            {
                q.WriteCacheDisabled = false;
            }
            else if (text.StartsWith("write through", StringComparison.Ordinal) || text.StartsWith("none", StringComparison.Ordinal))
            {
                q.WriteCacheDisabled = true;
            }
            else
            {
                throw new AttributeException(path, AttributeErrno.EINVAL, $"'{Chomp(text)}' is not 'write back' or 'write through'");
            }

            return ValueTask.CompletedTask;
        });
        Add(queueDir + "fua", () => Line(q.Limits.Fua ? 1 : 0));
        Add(queueDir + "dax", () => "0\n");

        // §11.3 item 9: the schedulers with the active one in brackets, each followed by a space
        // (elv_iosched_show). ActorBlk has none, so the list is `[none] `; writing `none` changes
        // nothing, any other name is EINVAL, as for a scheduler the kernel does not have.
        Add(queueDir + "scheduler", () => "[none] \n", (path, text) =>
        {
            var name = Chomp(text).Trim();
            return name == "none"
                ? ValueTask.CompletedTask
                : throw new AttributeException(path, AttributeErrno.EINVAL, $"'{name}' is not a scheduler of this device: ActorBlk dispatches without an I/O scheduler (none)");
        });

        // §11.3 item 9: at most max_hw_sectors_kb and at least a page (4 KiB); 0 restores the default.
        Add(queueDir + "max_sectors_kb", () => Line(q.Limits.MaxSectors / 2), (path, text) =>
        {
            var value = ParseUnsigned(path, text);
            var hardwareKb = q.Limits.MaxHardwareSectors / 2;
            if (value == 0)
            {
                q.SetMaxSectors(Math.Min(q.Limits.MaxHardwareSectors, QueueLimits.DefaultMaxSectors));
                return ValueTask.CompletedTask;
            }

            if (value > (ulong)hardwareKb || value < PageBuffer.PageSize / 1024 || value * 1024 < (ulong)q.Limits.LogicalBlockSize)
            {
                throw new AttributeException(path, AttributeErrno.EINVAL, $"{value} is not within 4..{hardwareKb} (max_hw_sectors_kb)");
            }

            q.SetMaxSectors((int)value * 2);
            return ValueTask.CompletedTask;
        });

        Add(queueDir + "read_only", () => Line(q.ReadOnly ? 1 : 0), (path, text) =>
        {
            var value = ParseUnsigned(path, text);
            if (value > 1)
            {
                throw new AttributeException(path, AttributeErrno.EINVAL, $"{value} is not 0 or 1");
            }

            if (value == 0 && q.DriverReadOnly is { } why)
            {
                throw new AttributeException(path, AttributeErrno.EINVAL, $"the driver's device is read-only ({why}); it cannot be made writable");
            }

            q.ReadOnly = value == 1;
            return ValueTask.CompletedTask;
        });

        // Any non-zero number marks the device rotational, as queue_feature_store does.
        Add(queueDir + "rotational", () => Line(q.Rotational ? 1 : 0), (path, text) =>
        {
            q.Rotational = ParseUnsigned(path, text) != 0;
            return ValueTask.CompletedTask;
        });

        // The disk's own files: its sequence number (Documentation/ABI/stable/sysfs-block, "diskseq"),
        // its size in 512-byte sectors and whether it is read-only (the disk's "ro", as queue/read_only).
        Add($"block/{q.Name}/diskseq", () => Line((long)q.DiskSeq));
        Add($"block/{q.Name}/size", () => Line(q.Limits.CapacitySectors));
        Add($"block/{q.Name}/ro", () => Line(q.ReadOnly ? 1 : 0));

        // Documentation/block/stat.rst: the 17 fields; inflight: "%8u %8u" reads and writes in flight.
        Add($"block/{q.Name}/stat", () => q.Stats.Read().Format());
        Add($"block/{q.Name}/inflight", () =>
        {
            var (reads, writes) = q.Stats.InFlight();
            return string.Create(CultureInfo.InvariantCulture, $"{reads,8} {writes,8}\n");
        });

        // A driver's own directory (a mirror's md/), as the md personality adds it to the disk's kobject.
        if (q.Kind == QueueKind.BioBased && q.BioDriver is IAttributeSource source)
        {
            source.AddAttributes($"block/{q.Name}/", (path, show, store) => Add(path, show, store));
        }

        // Not a kernel file: refused second completions of this queue's bios (0 unless the block layer has a bug).
        Add($"kernel/debug/block/{q.Name}/double_completions", () => Line(q.DoubleCompletions));

        // §11.1: a directory per mapped hardware queue; cpu_list is fixed for the snapshot.
        foreach (var hctx in q.HardwareContexts.Where(h => h.IsMapped))
        {
            var dir = $"block/{q.Name}/mq/{hctx.Index}/";
            var tags = hctx.Tags;
            var cpuList = CpuList(hctx.CpuMask);
            Add(dir + "nr_tags", () => Line(tags.NrTags));
            Add(dir + "nr_reserved_tags", () => Line(tags.NrReserved));
            Add(dir + "cpu_list", () => cpuList);

            var debug = $"kernel/debug/block/{q.Name}/hctx{hctx.Index}/";
            Add(debug + "state", () => State(hctx));
            Add(debug + "type", () => hctx.Type.ToString().ToLowerInvariant() + "\n");
            Add(debug + "active", () => Line(hctx.ActiveRequests));
            Add(debug + "queued", () => Line(hctx.QueuedCount));
            Add(debug + "run", () => Line(hctx.RunCount));
            Add(debug + "dispatched", () => Dispatched(hctx));
            Add(debug + "pending", () => RequestList("HCTX pending:\n", hctx.Tags, rq => rq.Hctx == hctx));
            Add(debug + "tags", () => Tags(hctx));
            foreach (var ctx in hctx.Contexts)
            {
                var cpu = debug + $"cpu{ctx.Cpu}/";
                Add(cpu + "dispatched", () => $"{ctx.DispatchedSync} {ctx.DispatchedAsync}\n");
                Add(cpu + "merged", () => Line(ctx.Merged));
                Add(cpu + "completed", () => $"{ctx.CompletedSync} {ctx.CompletedAsync}\n");
                Add(cpu + "rq_list", () => RequestList("CTX pending:\n", hctx.Tags, rq => rq.Ctx == ctx && rq.Hctx == hctx));
            }
        }

        return new AttributeTree(files, version);
    }

    // ------------------------------------------------------------------ formats

    private static string Line(long value) => value.ToString(CultureInfo.InvariantCulture) + "\n";

    private static string Chomp(string text) => text.EndsWith('\n') ? text[..^1] : text;

    // queue_var_store: kstrtoul, base 10, then at most UINT_MAX (§11.3 item 10): an unsigned decimal
    // with one optional leading '+' and one trailing newline. Every error, overflow included, is
    // EINVAL: queue_var_store returns -EINVAL whatever kstrtoul said.
    internal static ulong ParseUnsigned(string path, string text)
    {
        if (KernelNumbers.ToUInt64(text, out var value) is not null || value > uint.MaxValue)
        {
            throw new AttributeException(path, AttributeErrno.EINVAL, $"'{Chomp(text)}' is not an unsigned number up to {uint.MaxValue}");
        }

        return value;
    }

    // kstrtouint, base 10, its error returned as it is (md's min_sync_store and max_sync_store): the
    // same text as ParseUnsigned, but a number above UINT_MAX is ERANGE.
    internal static uint ParseUInt32(string path, string text) => KernelNumbers.ToUInt32(text, out var value) switch
    {
        null => value,
        AttributeErrno.ERANGE => throw new AttributeException(path, AttributeErrno.ERANGE, $"'{Chomp(text)}' is out of range: at most {uint.MaxValue} (kstrtouint)"),
        var errno => throw new AttributeException(path, errno.Value, $"'{Chomp(text)}' is not an unsigned number up to {uint.MaxValue}"),
    };

    // blk_mq_hw_sysfs_cpus_show: "0, 1, 2, 3\n", entries that do not fit in the page left out.
    private static string CpuList(Topology.CpuSet cpus)
    {
        var sb = new StringBuilder();
        foreach (var cpu in cpus)
        {
            var entry = (sb.Length == 0 ? string.Empty : ", ") + cpu.ToString(CultureInfo.InvariantCulture);
            if (sb.Length + entry.Length > PageBuffer.Limit - 1)
            {
                break;
            }

            sb.Append(entry);
        }

        return sb.Append('\n').ToString();
    }

    private static string State(HardwareContext hctx)
    {
        var flags = new List<string>();
        if (hctx.IsStopped)
        {
            flags.Add("STOPPED");
        }

        if (hctx.IsTagActive)
        {
            flags.Add("TAG_ACTIVE");
        }

        if (hctx.NeedsRestart)
        {
            flags.Add("SCHED_RESTART");
        }

        if (hctx.IsInactive)
        {
            flags.Add("INACTIVE");
        }

        return string.Join('|', flags) + "\n";
    }

    // §11.1 item 5: "%8u\t%lu" per bucket, labels 0, 1, 2, 4, ..., and the last "%8u+\t%lu": the
    // label padded to 8 and then the '+' ("      32+", nine characters).
    private static string Dispatched(HardwareContext hctx)
    {
        var sb = new StringBuilder();
        var buckets = hctx.DispatchedHistogram;
        for (var i = 0; i < buckets.Count; i++)
        {
            var label = i == 0 ? 0 : 1 << (i - 1);
            var plus = i == buckets.Count - 1 ? "+" : string.Empty;
            sb.Append(CultureInfo.InvariantCulture, $"{label,8}{plus}\t{buckets[i]}\n");
        }

        return sb.ToString();
    }

    private static string Tags(HardwareContext hctx)
    {
        var tags = hctx.Tags;
        return string.Create(CultureInfo.InvariantCulture,
            $"nr_tags={tags.NrTags}\nnr_reserved_tags={tags.NrReserved}\nactive_queues={tags.ActiveQueues}\nbusy={tags.InUse}\nnr_active={hctx.ActiveRequests}\n");
    }

    // The requests a list holds: allocated (tag held) and not yet started, one line each,
    // "\t" and 16 hex digits (a 64-bit pointer's width, the kernel's "%p"), bounded to the page.
    private static string RequestList(string header, Tags.TagMap tags, Func<Request, bool> belongs)
    {
        var page = new PageBuffer().Append(header);
        foreach (var rq in tags.Requests)
        {
            if (rq.State == RequestState.Idle && tags.IsAllocated(rq.Tag) && belongs(rq)
                && !page.TryAppendEntry(string.Create(CultureInfo.InvariantCulture, $"\t{((ulong)(uint)(rq.Hctx?.Index ?? 0) << 32) | (uint)rq.Tag:x16}\n")))
            {
                break;
            }
        }

        return page.ToString();
    }
}
