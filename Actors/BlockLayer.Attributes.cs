using System.Diagnostics;
using System.Globalization;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Sysfs;
using Akka.Actor;

namespace ActorBlk.Actors;

// Attribute-path routing of the block layer: sysfs and debugfs paths name a device, whose queue attributes answer.

public sealed partial class BlockLayer
{
    /// <summary>
    /// The path of the node's uptime in the attribute tree (<c>uptime</c>, at the root; not a sysfs
    /// file: the first field of <c>/proc/uptime</c>, read by <c>actorblk iostat</c> for its report
    /// since start, as sysstat reads <c>/proc/uptime</c> for its report since boot).
    /// </summary>
    public const string UptimeAttribute = "uptime";

    /// <summary>
    /// The path of the CPU times of the node's machine in the attribute tree (<c>stat</c>, at the
    /// root; not a sysfs file: the <c>cpu</c> line of the machine's <c>/proc/stat</c> as the kernel
    /// prints it, read by <c>actorblk iostat</c> for its <c>avg-cpu</c> report, as sysstat reads
    /// <c>/proc/stat</c>). Absent (not listed, ENOENT) where the machine has no <c>/proc/stat</c>.
    /// </summary>
    public const string CpuStatAttribute = "stat";

    private static readonly Lazy<bool> MachineHasCpuStat = new(() => CpuStatSample.ReadLine() is not null);

    private readonly long _started = Stopwatch.GetTimestamp();
    private long _treeEnumerations;
    private long _listedTrees;
    private Func<string, AttributeNode>? _nodeAt;

    /// <summary>Time since the block layer started on this node (what its devices' statistics count from at most).</summary>
    public TimeSpan Uptime => Stopwatch.GetElapsedTime(_started);

    /// <summary>
    /// The attribute paths of every registered device that start with <paramref name="prefix"/>
    /// (<c>block/nullb0/queue/</c>, <c>kernel/debug/block/</c>, or empty for all), sorted.
    /// </summary>
    public IReadOnlyList<string> ListAttributes(string prefix = "")
    {
        ArgumentNullException.ThrowIfNull(prefix);
        string p;
        try
        {
            p = Resolve(prefix);
        }
        catch (AttributeException)
        {
            return []; // a "." or ".." under a file or a missing name: nothing is under it
        }

        // A prefix that ends a directory's name ("block/nullb0/", "block/nullb0/queue/..") lists
        // what is under that directory only: the slash trimmed, "block/nullb0/" also listed
        // block/nullb01's paths.
        if (p.Length > 0 && AttributePath.Collapse(prefix) is var collapsed && (prefix.EndsWith('/') || collapsed.EndsWith("/.", StringComparison.Ordinal)
            || collapsed.EndsWith("/..", StringComparison.Ordinal) || collapsed is "." or ".."))
        {
            p += "/";
        }

        // A directory the tree does not have ("nosuch/", "block/nullb0/nope/") or a file taken as
        // one ("block/nullb0/size/"): nothing is under it, found from the path's own prefixes as a
        // failed lookup finds it.
        if (p.EndsWith('/') && NodeAt(p[..^1]) != AttributeNode.Directory)
        {
            return [];
        }

        // A prefix whose device name is complete (a slash follows it) lists that device's paths
        // only: a client listing a missing device in a loop made the node list its whole tree per
        // miss. Any other prefix but the root's reads only the parts of the tree it can reach
        // ("block/nullb" the trees of the devices whose names start so, "block/nope" none): it
        // read every device's tree, then filtered.
        var paths = p.Length == 0 ? AllAttributes()
            : WholeDeviceName(p) is { } name ? _devices.TryGetValue(name, out var device) ? TreeOf(device) : []
            : ReachableBy(p);
        return paths.Where(path => path.StartsWith(p, StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToArray();
    }

    // The paths of the parts of the tree where a path starting with the prefix may be: the CPU
    // directory, the node's own files, and the devices whose directories (block/<dev>/,
    // kernel/debug/block/<dev>/) start with the prefix or hold it.
    private List<string> ReachableBy(string prefix)
    {
        var paths = new List<string>();
        if (CpuAttributes.Root.StartsWith(prefix, StringComparison.Ordinal) || CpuAttributes.Owns(prefix))
        {
            paths.AddRange(CpuAttributes.List(CurrentTopology));
        }

        if (UptimeAttribute.StartsWith(prefix, StringComparison.Ordinal))
        {
            paths.Add(UptimeAttribute);
        }

        if (MachineHasCpuStat.Value && CpuStatAttribute.StartsWith(prefix, StringComparison.Ordinal))
        {
            paths.Add(CpuStatAttribute);
        }

        const string Block = "block/", DebugBlock = "kernel/debug/block/";
        if (!Block.StartsWith(prefix, StringComparison.Ordinal) && !prefix.StartsWith(Block, StringComparison.Ordinal)
            && !DebugBlock.StartsWith(prefix, StringComparison.Ordinal) && !prefix.StartsWith(DebugBlock, StringComparison.Ordinal))
        {
            return paths;
        }

        foreach (var (name, device) in _devices)
        {
            if (MayHold(prefix, Block, name) || MayHold(prefix, DebugBlock, name))
            {
                paths.AddRange(TreeOf(device));
            }
        }

        return paths;
    }

    // True when a path under directory + name + "/" may start with the prefix: the prefix is the
    // start of that directory's path ("block/nullb" of "block/nullb0/"), or lies under it.
    private static bool MayHold(string prefix, string directory, string name)
    {
        var p = prefix.AsSpan();
        if (p.Length <= directory.Length)
        {
            return directory.AsSpan().StartsWith(p, StringComparison.Ordinal);
        }

        if (!p.StartsWith(directory, StringComparison.Ordinal))
        {
            return false;
        }

        p = p[directory.Length..];
        return p.Length <= name.Length ? name.AsSpan().StartsWith(p, StringComparison.Ordinal) : p.StartsWith(name, StringComparison.Ordinal) && p[name.Length] == '/';
    }

    // One device's paths, for a listing; counted, so a spec can see which trees a listing read.
    private IReadOnlyList<string> TreeOf(BlockDevice device)
    {
        Interlocked.Increment(ref _listedTrees);
        return device.Attributes.List();
    }

    // The device a normalised prefix names in full (block/<dev>/..., kernel/debug/block/<dev>/...),
    // or null: "block/nullb" may still be the start of several devices' names.
    private static string? WholeDeviceName(string prefix) => prefix.Split('/') switch
    {
        ["block", var name, _, ..] => name,
        ["kernel", "debug", "block", var name, _, ..] => name,
        _ => null,
    };

    /// <summary>
    /// Why a listing of <paramref name="prefix"/> found nothing, as <c>ls</c> says it: ENOTDIR for
    /// a prefix through an attribute (<c>block/nullb0/size/</c>, <c>block/nullb0/size/..</c>),
    /// else ENOENT.
    /// </summary>
    internal AttributeErrno EmptyListingErrno(string prefix)
    {
        ArgumentNullException.ThrowIfNull(prefix);
        try
        {
            var p = Resolve(prefix);
            return ThroughAFile(prefix, p) ? AttributeErrno.ENOTDIR : AttributeErrno.ENOENT;
        }
        catch (AttributeException ex)
        {
            return ex.Errno;
        }
    }

    // Every path of the node: for a listing of the root only, whose cost is the tree's. Counted,
    // so a spec can see that a lookup (a miss included) and any other listing never enumerate the tree.
    private IEnumerable<string> AllAttributes()
    {
        Interlocked.Increment(ref _treeEnumerations);
        return CpuAttributes.List(CurrentTopology).Append(UptimeAttribute).Concat(MachineHasCpuStat.Value ? [CpuStatAttribute] : []).Concat(_devices.Values.SelectMany(TreeOf));
    }

    /// <summary>How many times the whole attribute tree was enumerated (a listing of the root does it once); for specs.</summary>
    internal long TreeEnumerations => Interlocked.Read(ref _treeEnumerations);

    /// <summary>How many device trees listings read (one per device a listing's prefix can reach); for specs.</summary>
    internal long ListedDeviceTrees => Interlocked.Read(ref _listedTrees);

    /// <summary>
    /// Reads an attribute: <c>block/&lt;dev&gt;/queue/nr_requests</c>, <c>block/&lt;dev&gt;/mq/0/cpu_list</c>,
    /// <c>devices/system/cpu/online</c>, <c>uptime</c> (seconds since the block layer started, two
    /// decimals, as <c>/proc/uptime</c>'s first field), <c>stat</c> (the <c>cpu</c> line of the
    /// machine's <c>/proc/stat</c>) ...
    /// </summary>
    /// <exception cref="AttributeException">ENOENT: no such device or attribute (<c>stat</c> on a machine without <c>/proc/stat</c>); EISDIR: the path is a directory (<c>block/nullb0/queue</c>); EACCES: the attribute is write-only.</exception>
    public string ReadAttribute(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var p = Resolve(path);
        if (path.EndsWith('/') && ThroughAFile(path, p))
        {
            throw new AttributeException(p, AttributeErrno.ENOTDIR, "not a directory");
        }

        if (p == UptimeAttribute)
        {
            // Centiseconds, truncated, as the kernel's uptime_proc_show prints them.
            return (Math.Floor(Uptime.TotalSeconds * 100) / 100).ToString("F2", CultureInfo.InvariantCulture) + "\n";
        }

        if (p == CpuStatAttribute)
        {
            // Read afresh each time, as the kernel generates /proc/stat on each read.
            return CpuStatSample.ReadLine() ?? throw new AttributeException(p, AttributeErrno.ENOENT, $"the node's machine has no {CpuStatSample.ProcStat}");
        }

        try
        {
            return CpuAttributes.Owns(p) ? CpuAttributes.Read(CurrentTopology, p) : AttributesOf(p).Read(p);
        }
        catch (AttributeException ex) when (ex.Errno == AttributeErrno.ENOENT && PathError(path, p) is { } refined)
        {
            throw refined;
        }
    }

    /// <summary>
    /// Writes an attribute with the kernel's rules for it. Writing 0 or 1 to
    /// <c>devices/system/cpu/cpu&lt;N&gt;/online</c> is a hotplug event (<see cref="SetCpuOnlineAsync"/>).
    /// An empty value (zero bytes; not <c>"\n"</c>) is taken and changes nothing, as the kernel's
    /// <c>sysfs_kf_write</c> returns 0 without calling the attribute's store; the path is looked up
    /// and a read-only attribute refused (EACCES) first, as <c>open(2)</c> does.
    /// </summary>
    /// <exception cref="AttributeException">ENOENT, EISDIR (a directory), EACCES (read-only, an empty value too), EINVAL (refused value), ERANGE (a number past the attribute's type: <c>io_poll_delay</c>, md's <c>sync_speed_min</c> and <c>sync_speed_max</c>), EBUSY (the last online CPU; a mirror's refusal), ENXIO (a mirror's <c>md/new_dev</c> naming no device it can take) or ENOSPC (a mirror's <c>md/new_dev</c>, or a leg's <c>re-add</c>, of a device smaller than the mirror's legs); nothing changed. Also EBUSY when a CPU's hotplug remap did not end within the drain timeout plus 10 s (a device it freezes is still draining): that remap goes on, and the topology changes when it ends.</exception>
    public async ValueTask WriteAttributeAsync(string path, string value)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(value);
        var p = Resolve(path);
        if (path.EndsWith('/') && ThroughAFile(path, p))
        {
            throw new AttributeException(p, AttributeErrno.ENOTDIR, "not a directory");
        }

        if (p == UptimeAttribute || (p == CpuStatAttribute && MachineHasCpuStat.Value))
        {
            throw new AttributeException(p, AttributeErrno.EACCES, "the attribute is read-only");
        }

        if (!CpuAttributes.Owns(p))
        {
            try
            {
                await AttributesOf(p).WriteAsync(p, value).ConfigureAwait(false);
            }
            catch (AttributeException ex) when (ex.Errno == AttributeErrno.ENOENT && PathError(path, p) is { } refined)
            {
                throw refined;
            }

            return;
        }

        (int Cpu, bool Online)? hotplug;
        try
        {
            hotplug = CpuAttributes.ParseWrite(CurrentTopology, p, value);
        }
        catch (AttributeException ex) when (ex.Errno == AttributeErrno.ENOENT && PathError(path, p) is { } refined)
        {
            throw refined;
        }

        if (hotplug is not { } cpu)
        {
            return; // an empty write: nothing to do
        }

        try
        {
            await SetCpuOnlineAsync(cpu.Cpu, cpu.Online).ConfigureAwait(false);
        }
        catch (InvalidOperationException ex)
        {
            throw new AttributeException(p, AttributeErrno.EBUSY, ex.Message);
        }
        catch (ArgumentOutOfRangeException ex)
        {
            throw new AttributeException(p, AttributeErrno.ENOENT, ex.Message.Split(" (Parameter")[0]);
        }
        catch (TimeoutException ex)
        {
            // The remap waits for a device that is still draining (a slow disk holds its I/O) and
            // goes on; this write's caller is told so rather than left with a bare exception,
            // which the sysfs actor could not send to a remote client.
            throw new AttributeException(p, AttributeErrno.EBUSY, ex.Message);
        }
    }

    // A mirror's md/new_dev (MirrorTarget.LegReplacer): ReplaceMirrorLegAsync, which asks the
    // guardian and so never runs on it. A write arrives from a caller's thread or from the sysfs
    // actor, whose handler returns at the first await and pipes the answer back: neither waits on
    // its own mailbox. The node going away is ENOENT, as a write to a dying device's attribute.
    internal async Task ReplaceLegByAttributeAsync(string mirror, int slot, string member)
    {
        var path = $"block/{mirror}/md/new_dev";
        try
        {
            await ReplaceMirrorLegAsync(mirror, slot, member).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is BlockLayerStoppingException or ObjectDisposedException)
        {
            throw new AttributeException(path, AttributeErrno.ENOENT, ex.Message);
        }
        catch (AskTimeoutException ex)
        {
            throw new AttributeException(path, AttributeErrno.EBUSY, $"the replacement did not end within {ControlTimeout.TotalSeconds:0} s: {ex.Message}");
        }
    }

    // "/sys/block/nullb0/queue/x", "block/nullb0/queue/x" and "kernel/debug/block/nullb0/..." name the device in the path.
    // The path is already normalised by the caller.
    private QueueAttributes AttributesOf(string path)
    {
        var device = DeviceNamed(path);
        return device is not null && _devices.TryGetValue(device, out var d)
            ? d.Attributes
            : throw new AttributeException(path, AttributeErrno.ENOENT, device is null ? "no such attribute" : $"there is no device '{device}'");
    }

    // The device a normalised path lies under (block/<dev>/..., kernel/debug/block/<dev>/...), or null.
    private static string? DeviceNamed(string path) => path.Split('/') switch
    {
        ["block", var name, ..] => name,
        ["kernel", "debug", "block", var name, ..] => name,
        _ => null,
    };

    // What the tree holds at a normalised path, found from the path alone: the root, the node's
    // own files, the CPU part, or the snapshot of the one device the path names (a binary search).
    // The directories above the devices' trees (block, kernel/debug/block ...) exist while some
    // device has a tree, as they did when the whole tree was searched for a path under them.
    // Never enumerates the tree: a failed lookup used to list every path of every device to choose
    // its errno, so a client retrying a missing path made the node list its whole tree per miss.
    private AttributeNode NodeAt(string p)
    {
        if (p.Length == 0)
        {
            return AttributeNode.Directory;
        }

        if (p == UptimeAttribute || (p == CpuStatAttribute && MachineHasCpuStat.Value))
        {
            return AttributeNode.File;
        }

        var topology = CurrentTopology;
        if (CpuAttributes.IsFile(topology, p))
        {
            return AttributeNode.File;
        }

        if (CpuAttributes.IsDirectory(topology, p))
        {
            return AttributeNode.Directory;
        }

        if (DeviceNamed(p) is { } name)
        {
            var tree = _devices.TryGetValue(name, out var device) ? device.Attributes.Visible : null;
            return tree is null ? AttributeNode.None : tree.Contains(p) ? AttributeNode.File : tree.IsDirectory(p) ? AttributeNode.Directory : AttributeNode.None;
        }

        return p is "block" or "kernel" or "kernel/debug" or "kernel/debug/block" && AnyDeviceTree() ? AttributeNode.Directory : AttributeNode.None;
    }

    // True when some device has a tree. Stops at the first; enumerating the dictionary itself
    // takes no lock and copies nothing (its Values would do both).
    private bool AnyDeviceTree()
    {
        foreach (var (_, device) in _devices)
        {
            if (device.Attributes.Visible is not null)
            {
                return true;
            }
        }

        return false;
    }

    // A directory of the tree: the root ("/", "/sys"), one above the devices' trees (block,
    // kernel/debug/block, devices/system/cpu, cpu<N>) or one inside a device's (block/<dev>/queue).
    // The empty path is no directory: it names nothing, as open("") is ENOENT.
    private bool IsDirectory(string path, string normalized) => path.Length > 0 && NodeAt(normalized) == AttributeNode.Directory;

    // What open(2) says of a path that names no attribute: EISDIR for a directory of the tree,
    // ENOTDIR for a path through a file; null when it names nothing at all (ENOENT stands).
    private AttributeException? PathError(string path, string normalized) =>
        IsDirectory(path, normalized) ? new AttributeException(normalized, AttributeErrno.EISDIR, "is a directory")
        : ThroughAFile(path, normalized) ? new AttributeException(normalized, AttributeErrno.ENOTDIR, "not a directory")
        : null;

    // A path that goes through an attribute as if it were a directory ("block/nullb0/size/",
    // "block/nullb0/size/x"): ENOTDIR to open(2). Looks at the path's own prefixes (NodeAt).
    private bool ThroughAFile(string path, string normalized) => AttributePath.ThroughAFile(path, normalized, _nodeAt ??= NodeAt);

    // The path a walk reaches, as the tree names it: "/sys/", repeated slashes, "." and ".."
    // resolved as Linux's path lookup does, within this tree (AttributePath.Resolve, which a
    // device's own tree uses too), a directory checked by NodeAt, never by enumerating the tree.
    private string Resolve(string path) => AttributePath.Resolve(path, _nodeAt ??= NodeAt);
}
