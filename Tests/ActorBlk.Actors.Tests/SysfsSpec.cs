using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Sysfs;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// The attribute tree (blk-mq-semantics §11) through the block layer and through the sysfs actor:
/// its layout, the kernel's read and write rules, the one-page bound, and that it follows hotplug
/// and registration. The simulated machine has 4 CPUs on 2 sockets.
/// </summary>
public sealed class SysfsSpec : Akka.TestKit.Xunit2.TestKit
{
    public SysfsSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
    }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    private Task<IBlockDevice> Create(string name, int submitQueues = 2, int depth = 64, MergePolicy nomerges = MergePolicy.All) =>
        Layer.CreateDeviceAsync(new DeviceOptions
        {
            Name = name,
            Size = 64 << 20,
            SubmitQueues = submitQueues,
            PollQueues = 0,
            HwQueueDepth = depth,
            NoMerges = nomerges,
        });

    private async Task<AttributeException> Refused(string path, string value) =>
        await Assert.ThrowsAsync<AttributeException>(async () => await Layer.WriteAttributeAsync(path, value));

    [Fact]
    public async Task Queue_attributes_show_the_defaults()
    {
        await Create("sd0");
        string Read(string name) => Layer.ReadAttribute($"block/sd0/queue/{name}");

        Assert.Equal("64\n", Read("nr_requests"));        // §2.6 item 28: queue depth without a scheduler
        Assert.Equal("1\n", Read("rq_affinity"));         // §6 item 2
        Assert.Equal("0\n", Read("io_poll"));             // no poll queues
        Assert.Equal("-1\n", Read("io_poll_delay"));      // §7 item 7 [cur]
        Assert.Equal("5000\n", Read("io_timeout"));       // null_blk's 5 s (§5 item 1)
        Assert.Equal("0\n", Read("nomerges"));
        Assert.Equal("512\n", Read("logical_block_size"));
        Assert.Equal("512\n", Read("physical_block_size"));
        Assert.Equal("1280\n", Read("max_sectors_kb"));   // BLK_DEF_MAX_SECTORS_CAP, 2560 sectors
        Assert.Equal("1280\n", Read("max_hw_sectors_kb"));
        Assert.Equal("0\n", Read("read_only"));
        Assert.Equal("0\n", Read("rotational"));

        // §11.3 item 9's read-only limits (a conformance audit found them missing): a null device
        // without discard (it needs memory_backed) or a write cache.
        Assert.Equal("512\n", Read("hw_sector_size"));
        Assert.Equal("128\n", Read("max_segments"));      // BLK_MAX_SEGMENTS
        Assert.Equal("0\n", Read("discard_max_bytes"));
        Assert.Equal("0\n", Read("discard_max_hw_bytes"));
        Assert.Equal("0\n", Read("write_zeroes_max_bytes"));
        Assert.Equal("write through\n", Read("write_cache"));
        Assert.Equal("0\n", Read("fua"));
        Assert.Equal("0\n", Read("dax"));
        Assert.Equal("[none] \n", Read("scheduler"));

        // "/sys/" in front is accepted, as a shell user would type it.
        Assert.Equal("64\n", Layer.ReadAttribute("/sys/block/sd0/queue/nr_requests"));

        // Repeated slashes are one, as in a path walk (an outside audit: "block//sd0/..." was
        // "there is no device ''").
        Assert.Equal("64\n", Layer.ReadAttribute("/sys//block//sd0/queue///nr_requests"));
        var queueDir = Layer.ListAttributes("block/sd0/queue/");
        Assert.Equal(22, queueDir.Count);
    }

    [Fact]
    public async Task The_scheduler_is_none_and_the_limits_follow_the_device()
    {
        // §11.3 item 9: `none` may be written (it is the one scheduler); any other name is
        // EINVAL, as for a scheduler the kernel does not have.
        await Layer.CreateDeviceAsync(new DeviceOptions
        {
            Name = "sd9", Size = 64 << 20, BlockSize = 4096, MemoryBacked = true, Discard = true, WriteCache = true, PollQueues = 0,
        });
        string Read(string name) => Layer.ReadAttribute($"block/sd9/queue/{name}");
        await Layer.WriteAttributeAsync("block/sd9/queue/scheduler", "none\n");
        Assert.Equal("[none] \n", Read("scheduler"));
        var refused = await Refused("block/sd9/queue/scheduler", "mq-deadline");
        Assert.Equal(AttributeErrno.EINVAL, refused.Errno);
        Assert.Contains("'mq-deadline' is not a scheduler of this device", refused.Message, StringComparison.Ordinal);
        Assert.Equal(AttributeErrno.EACCES, (await Refused("block/sd9/queue/hw_sector_size", "512")).Errno);

        Assert.Equal("4096\n", Read("hw_sector_size"));
        Assert.Equal($"{(int.MaxValue >> 9) * 512L}\n", Read("discard_max_bytes"));
        Assert.Equal($"{(int.MaxValue >> 9) * 512L}\n", Read("write_zeroes_max_bytes"));
        Assert.Equal("write back\n", Read("write_cache"));
        Assert.Equal("1\n", Read("fua"));
    }

    [Fact]
    public async Task Discard_max_bytes_limits_discards_to_the_value_written_and_zero_turns_them_off()
    {
        // queue_discard_max_store: a multiple of discard_granularity (the logical block size here)
        // or EINVAL; above discard_max_hw_bytes it is cut to it; the discards that follow are split
        // to it (stat's field 12 counts each piece); 0 turns discard off, as a device that has none.
        var device = await Layer.CreateDeviceAsync(new DeviceOptions { Name = "dm0", Size = 64 << 20, BlockSize = 4096, MemoryBacked = true, Discard = true, PollQueues = 0 });
        string Read(string name) => Layer.ReadAttribute($"block/dm0/{name}");
        ulong Discards() => DiskStatSample.Parse(Read("stat")).DiscardIos;
        var hardware = $"{(int.MaxValue >> 9) * 512L}\n";
        Assert.Equal("4096\n", Read("queue/discard_granularity"));

        await Layer.WriteAttributeAsync("block/dm0/queue/discard_max_bytes", "1048576\n");
        Assert.Equal("1048576\n", Read("queue/discard_max_bytes"));
        Assert.Equal(hardware, Read("queue/discard_max_hw_bytes"));
        await device.DiscardAsync(0, 4 << 20);
        Assert.Equal(4ul, Discards());

        var misaligned = await Refused("block/dm0/queue/discard_max_bytes", "1000");
        Assert.Equal(AttributeErrno.EINVAL, misaligned.Errno);
        Assert.Contains("discard granularity (4096 bytes)", misaligned.Message, StringComparison.Ordinal);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/dm0/queue/discard_max_bytes", "-4096")).Errno);
        Assert.Equal("1048576\n", Read("queue/discard_max_bytes"));

        await Layer.WriteAttributeAsync("block/dm0/queue/discard_max_bytes", "4294963200");
        Assert.Equal(hardware, Read("queue/discard_max_bytes"));

        await Layer.WriteAttributeAsync("block/dm0/queue/discard_max_bytes", "0");
        Assert.Equal("0\n", Read("queue/discard_max_bytes"));
        var off = await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await device.DiscardAsync(0, 4096));
        Assert.Equal(InvalidRequestReason.NotSupported, off.Reason);
        Assert.Equal(4ul, Discards());

        // A device without discard has no granularity: bytes & (0 - 1) refuses every value but 0
        // (an outside audit saw 4096 taken and read back as 0), and it stays without.
        await Create("dm1");
        Assert.Equal("0\n", Layer.ReadAttribute("block/dm1/queue/discard_granularity"));
        var none = await Refused("block/dm1/queue/discard_max_bytes", "4096");
        Assert.Equal(AttributeErrno.EINVAL, none.Errno);
        Assert.Contains("discard_granularity is 0", none.Message, StringComparison.Ordinal);
        await Layer.WriteAttributeAsync("block/dm1/queue/discard_max_bytes", "0");
        Assert.Equal("0\n", Layer.ReadAttribute("block/dm1/queue/discard_max_bytes"));
    }

    [Fact]
    public async Task Write_through_turns_the_write_cache_off_so_flushes_no_longer_reach_the_device()
    {
        // §11.3 item 9, queue_wc_store: "write through" (or "none") sets the cache off, so an
        // empty flush completes at once and is not accounted; "write back" turns it on again; a
        // device without a cache stays "write through"; anything else is EINVAL.
        var device = await Layer.CreateDeviceAsync(new DeviceOptions { Name = "wc0", Size = 64 << 20, WriteCache = true, PollQueues = 0 });
        string Read(string name) => Layer.ReadAttribute($"block/wc0/{name}");
        long Flushes() => long.Parse(Read("stat").Split(' ', StringSplitOptions.RemoveEmptyEntries)[15], System.Globalization.CultureInfo.InvariantCulture);

        await device.FlushAsync();
        Assert.Equal(1, Flushes());

        await Layer.WriteAttributeAsync("block/wc0/queue/write_cache", "write through\n");
        Assert.Equal("write through\n", Read("queue/write_cache"));
        await device.FlushAsync();
        Assert.Equal(1, Flushes());

        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/wc0/queue/write_cache", "writeback")).Errno);
        Assert.Equal("write through\n", Read("queue/write_cache"));

        await Layer.WriteAttributeAsync("block/wc0/queue/write_cache", "write back");
        Assert.Equal("write back\n", Read("queue/write_cache"));
        await device.FlushAsync();
        Assert.Equal(2, Flushes());

        await Layer.CreateDeviceAsync(new DeviceOptions { Name = "wc1", Size = 64 << 20, PollQueues = 0 });
        await Layer.WriteAttributeAsync("block/wc1/queue/write_cache", "write back\n");
        Assert.Equal("write through\n", Layer.ReadAttribute("block/wc1/queue/write_cache"));
    }

    [Fact]
    public async Task Mq_directories_exist_for_mapped_hardware_queues_only()
    {
        // §11.1 item 1 and §15: a directory per mapped hardware queue only, each with nr_tags,
        // nr_reserved_tags and cpu_list ("0, 1" form). With the contiguous map ([3.13]) and CPU 3
        // offline, 3 online CPUs serve 4 hardware queues: one is left unmapped and has no directory.
        var device = await Layer.CreateDeviceAsync(new DeviceOptions
        {
            Name = "sd1", Size = 64 << 20, SubmitQueues = 4, PollQueues = 0, CpuMapAlgorithm = Hardware.Topology.CpuMapAlgorithm.Contiguous,
        });
        Assert.Equal([0, 1, 2, 3], MqDirectories("sd1"));

        await Layer.SetCpuOnlineAsync(3, online: false);
        var mapped = device.Queue.HardwareContexts.Where(h => h.IsMapped).Select(h => h.Index).ToArray();
        Assert.True(mapped.Length < 4);
        Assert.Equal(mapped, MqDirectories("sd1"));
        var cpus = new List<int>();
        foreach (var n in mapped)
        {
            Assert.Equal("64\n", Layer.ReadAttribute($"block/sd1/mq/{n}/nr_tags"));
            Assert.Equal("0\n", Layer.ReadAttribute($"block/sd1/mq/{n}/nr_reserved_tags"));
            var list = Layer.ReadAttribute($"block/sd1/mq/{n}/cpu_list");
            Assert.Matches("^[0-9]+(, [0-9]+)*\n$", list);
            Assert.Equal(device.Queue.HardwareContexts[n].CpuMask.ToCommaSeparatedString() + "\n", list);
            cpus.AddRange(list.TrimEnd('\n').Split(", ").Select(int.Parse));
        }

        Assert.Equal([0, 1, 2, 3], cpus.Order());
        var unmapped = device.Queue.HardwareContexts.First(h => !h.IsMapped).Index;
        Assert.Equal(AttributeErrno.ENOENT, Assert.Throws<AttributeException>(() => Layer.ReadAttribute($"block/sd1/mq/{unmapped}/nr_tags")).Errno);

        await Layer.SetCpuOnlineAsync(3, online: true);
        Assert.Equal([0, 1, 2, 3], MqDirectories("sd1"));
        Assert.Equal("3\n", Layer.ReadAttribute("block/sd1/mq/3/cpu_list"));
    }

    private int[] MqDirectories(string device) =>
        Layer.ListAttributes($"block/{device}/mq/").Select(p => int.Parse(p.Split('/')[3])).Distinct().Order().ToArray();

    [Fact]
    public async Task Writes_follow_the_kernels_rules_and_bad_ones_change_nothing()
    {
        var device = await Create("sd2");
        var q = device.Queue;

        // nr_requests (§2.6 item 29): below 4 becomes 4; above the depth, not a number, or above UINT_MAX: EINVAL.
        await Layer.WriteAttributeAsync("block/sd2/queue/nr_requests", "2\n");
        Assert.Equal("4\n", Layer.ReadAttribute("block/sd2/queue/nr_requests"));
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/nr_requests", "65")).Errno);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/nr_requests", "many")).Errno);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/nr_requests", "4294967296")).Errno);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/nr_requests", "-1")).Errno);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/nr_requests", "+")).Errno);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/nr_requests", "++8")).Errno);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/nr_requests", "+-8")).Errno);
        Assert.Equal(4, q.NrRequests);

        // kstrtoul takes one leading '+' ("echo +32 > nr_requests" works on Linux).
        await Layer.WriteAttributeAsync("block/sd2/queue/nr_requests", "+32\n");
        Assert.Equal(32, q.NrRequests);
        await Layer.WriteAttributeAsync("block/sd2/queue/nr_requests", "64");
        Assert.Equal(64, q.NrRequests);

        // rq_affinity (§6 item 1): 0/1/2 set it; another number is accepted and changes nothing.
        await Layer.WriteAttributeAsync("block/sd2/queue/rq_affinity", "2");
        await Layer.WriteAttributeAsync("block/sd2/queue/rq_affinity", "3");
        Assert.Equal("2\n", Layer.ReadAttribute("block/sd2/queue/rq_affinity"));
        Assert.Equal(CompletionAffinity.SubmittingCpu, q.RqAffinity);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/rq_affinity", "two")).Errno);

        // io_timeout (§5 item 1): milliseconds, 0 refused.
        await Layer.WriteAttributeAsync("block/sd2/queue/io_timeout", "1500\n");
        Assert.Equal(1500, q.IoTimeoutMs);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/io_timeout", "0")).Errno);
        Assert.Equal(1500, q.IoTimeoutMs);

        // Any u32 but 0 (§11.3 item 10; an outside audit saw 4294967295 refused): beyond 2^31 - 1
        // ms it is held as 2^31 - 1 (24.8 days); past u32, EINVAL.
        await Layer.WriteAttributeAsync("block/sd2/queue/io_timeout", "4294967295");
        Assert.Equal(int.MaxValue, q.IoTimeoutMs);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/io_timeout", "4294967296")).Errno);
        await Layer.WriteAttributeAsync("block/sd2/queue/io_timeout", "1500");

        // nomerges (§3.2 item 4): 2 = none, other non-zero = one-hit only.
        await Layer.WriteAttributeAsync("block/sd2/queue/nomerges", "7");
        Assert.Equal("1\n", Layer.ReadAttribute("block/sd2/queue/nomerges"));
        await Layer.WriteAttributeAsync("block/sd2/queue/nomerges", "2");
        Assert.Equal(MergePolicy.Off, q.MergePolicy);

        // max_sectors_kb (§11.3 item 9): 4..max_hw_sectors_kb, 0 restores the default.
        await Layer.WriteAttributeAsync("block/sd2/queue/max_sectors_kb", "64");
        Assert.Equal(128, q.Limits.MaxSectors);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/max_sectors_kb", "1281")).Errno);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/max_sectors_kb", "2")).Errno);
        Assert.Equal(128, q.Limits.MaxSectors);
        await Layer.WriteAttributeAsync("block/sd2/queue/max_sectors_kb", "0");
        Assert.Equal("1280\n", Layer.ReadAttribute("block/sd2/queue/max_sectors_kb"));

        // read_only 0/1 takes effect on the next write; rotational: any non-zero is 1.
        await Layer.WriteAttributeAsync("block/sd2/queue/read_only", "1");
        await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await device.WriteAsync(0, new byte[4096]));
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/read_only", "2")).Errno);
        await Layer.WriteAttributeAsync("block/sd2/queue/read_only", "0");
        await device.WriteAsync(0, new byte[4096]);
        await Layer.WriteAttributeAsync("block/sd2/queue/rotational", "9");
        Assert.Equal("1\n", Layer.ReadAttribute("block/sd2/queue/rotational"));

        // io_poll without poll queues: EINVAL; io_poll_delay: a number >= -1, then ignored (§7 item 7).
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/io_poll", "1")).Errno);
        await Layer.WriteAttributeAsync("block/sd2/queue/io_poll_delay", "50");
        Assert.Equal("-1\n", Layer.ReadAttribute("block/sd2/queue/io_poll_delay"));
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd2/queue/io_poll_delay", "-2")).Errno);

        // Read-only attributes, unknown attributes and unknown devices.
        Assert.Equal(AttributeErrno.EACCES, (await Refused("block/sd2/queue/logical_block_size", "4096")).Errno);
        Assert.Equal(AttributeErrno.EACCES, (await Refused("block/sd2/mq/0/nr_tags", "8")).Errno);
        Assert.Equal(AttributeErrno.ENOENT, (await Refused("block/sd2/queue/iosched/quantum", "8")).Errno);
        Assert.Equal(AttributeErrno.ENOENT, (await Refused("block/nosuch/queue/nr_requests", "8")).Errno);
        Assert.Equal(AttributeErrno.ENOENT, Assert.Throws<AttributeException>(() => Layer.ReadAttribute("proc/meminfo")).Errno);
        Assert.Equal("512\n", Layer.ReadAttribute("block/sd2/queue/logical_block_size"));
    }

    [Fact]
    public async Task A_long_pending_list_is_cut_at_one_page_with_an_ellipsis()
    {
        // §11.1 item 6: 1,000 pending requests would need 18,000 bytes; the page holds the header,
        // as many 18-byte entries as fit in 4095 bytes, and "\t...\n".
        var device = await Create("sd3", submitQueues: 1, depth: 1024, nomerges: MergePolicy.Off);
        await device.Queue.QuiesceAsync();
        var buffers = Enumerable.Range(0, 1000).Select(_ => new byte[512]).ToArray();
        var reads = Enumerable.Range(0, 1000).Select(i => device.ReadAsync(i * 4096L, buffers[i]).AsTask()).ToArray();

        string pending;
        try
        {
            pending = Layer.ReadAttribute("kernel/debug/block/sd3/hctx0/pending");
        }
        finally
        {
            device.Queue.Unquiesce();
        }


        Assert.StartsWith("HCTX pending:\n", pending);
        Assert.EndsWith("\t...\n", pending);
        Assert.True(pending.Length <= PageBuffer.PageSize - 1, $"{pending.Length} characters");
        var entries = pending.Split('\n', StringSplitOptions.RemoveEmptyEntries).Skip(1).SkipLast(1).ToArray();
        Assert.Equal((4095 - 14) / 18, entries.Length);
        Assert.All(entries, e => Assert.Matches("^\t[0-9a-f]{16}$", e));
        Assert.Equal(entries.Length, entries.Distinct().Count());
        await Task.WhenAll(reads);
        Assert.Equal("1000\n", Layer.ReadAttribute("kernel/debug/block/sd3/hctx0/queued"));
        Assert.Equal("HCTX pending:\n", Layer.ReadAttribute("kernel/debug/block/sd3/hctx0/pending"));
        Assert.Equal("0\n", Layer.ReadAttribute("kernel/debug/block/sd3/hctx0/active"));
    }

    [Fact]
    public async Task Debug_counters_follow_the_io()
    {
        var device = await Create("sd4", submitQueues: 1);
        await device.WriteAsync(0, new byte[4096], cpu: 1);
        await device.ReadAsync(65536, new byte[4096], cpu: 1);

        var hctx = device.Queue.SoftwareContexts[1].HardwareQueue(Hardware.Topology.HctxType.Default).Index;
        var dir = $"kernel/debug/block/sd4/hctx{hctx}/";
        Assert.Equal("1 1\n", Layer.ReadAttribute(dir + "cpu1/dispatched"));   // "<sync> <async>": the read is sync, the write async
        Assert.Equal("1 1\n", Layer.ReadAttribute(dir + "cpu1/completed"));
        Assert.Equal("0\n", Layer.ReadAttribute(dir + "cpu1/merged"));
        Assert.Equal("CTX pending:\n", Layer.ReadAttribute(dir + "cpu1/rq_list"));
        Assert.Equal("2\n", Layer.ReadAttribute(dir + "queued"));
        // blk-mq-debugfs.c: "%8u\t%lu\n" per bucket and "%8u+\t%lu\n" last, so the '+' follows the padded label.
        var histogram = Layer.ReadAttribute(dir + "dispatched").Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(["       0", "       1", "       2", "       4", "       8", "      16", "      32+"], histogram.Select(l => l.Split('\t')[0]));

        // A dispatch round records its size after its requests were queued to the driver, which
        // may complete them (and wake this test) first: await the two rounds.
        await AwaitAssertAsync(() => Assert.Equal(2, Layer.ReadAttribute(dir + "dispatched")
            .Split('\n', StringSplitOptions.RemoveEmptyEntries).Sum(l => long.Parse(l.Split('\t')[1]))), TimeSpan.FromSeconds(30), TimeSpan.FromMilliseconds(10));
        Assert.Contains("nr_tags=64\n", Layer.ReadAttribute(dir + "tags"));
        Assert.Equal("default\n", Layer.ReadAttribute(dir + "type"));
    }

    [Fact]
    public async Task The_tree_follows_hotplug_and_goes_with_the_device()
    {
        var device = await Create("sd5", submitQueues: 2);
        var before = device.Attributes.Current!;
        await Layer.SetCpuOnlineAsync(3, online: false);
        var after = device.Attributes.Current!;
        Assert.True(after.Version > before.Version);
        Assert.DoesNotContain(after.Paths, p => p.EndsWith("/cpu3/dispatched", StringComparison.Ordinal) && IsOfflineCtx(device, 3));
        await Layer.SetCpuOnlineAsync(3, online: true);

        await Layer.DestroyDeviceAsync("sd5");
        Assert.Empty(Layer.ListAttributes("block/sd5/"));
        Assert.Equal(AttributeErrno.ENOENT, Assert.Throws<AttributeException>(() => Layer.ReadAttribute("block/sd5/queue/nr_requests")).Errno);
        Assert.Equal(AttributeErrno.ENOENT, Assert.Throws<AttributeException>(() => device.Attributes.Read("block/sd5/queue/nr_requests")).Errno);
    }

    // Not a sysfs file: /proc/uptime's first field (seconds, two decimals, truncated), the node's
    // block layer's, for iostat's first report (sysstat's "since boot" report reads /proc/uptime).
    [Fact]
    public async Task Uptime_is_the_seconds_since_the_block_layer_started_and_is_read_only()
    {
        var first = Layer.ReadAttribute("uptime");
        Assert.Matches(@"^\d+\.\d\d\n$", first);
        var seconds = double.Parse(first, System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(seconds, 0, Layer.Uptime.TotalSeconds);
        Assert.True(double.Parse(Layer.ReadAttribute("/sys/uptime"), System.Globalization.CultureInfo.InvariantCulture) >= seconds);
        Assert.Contains("uptime", Layer.ListAttributes(string.Empty));
        Assert.Equal(AttributeErrno.EACCES, (await Refused("uptime", "0")).Errno);
    }

    // Not a sysfs file: the cpu line of the machine's /proc/stat as the kernel prints it, for
    // iostat's avg-cpu report (sysstat reads /proc/stat). Read afresh: its counters lie between
    // those of a direct read before and one after.
    [SkippableFact]
    public async Task Stat_is_the_cpu_line_of_the_machines_proc_stat_and_is_read_only()
    {
        Skip.IfNot(File.Exists(CpuStatSample.ProcStat), "no /proc/stat on this machine");
        var before = CpuStatSample.Parse(File.ReadLines(CpuStatSample.ProcStat).First());
        var text = Layer.ReadAttribute("stat");
        var after = CpuStatSample.Parse(File.ReadLines(CpuStatSample.ProcStat).First());

        Assert.Matches(@"^cpu  \d+( \d+){3,9}\n$", text);
        var read = CpuStatSample.Parse(text);
        foreach (var field in new Func<CpuStatSample, ulong>[] { s => s.User, s => s.Nice, s => s.System, s => s.Idle, s => s.Iowait, s => s.Irq, s => s.Softirq, s => s.Steal, s => s.Guest, s => s.GuestNice })
        {
            Assert.InRange(field(read), field(before), field(after));
        }

        Assert.True(read.Idle > 0);
        Assert.StartsWith("cpu  ", Layer.ReadAttribute("/sys/stat"), StringComparison.Ordinal);
        Assert.Contains("stat", Layer.ListAttributes(string.Empty));
        Assert.Equal(AttributeErrno.EACCES, (await Refused("stat", "0")).Errno);
    }

    // As sysstat's read_stat_cpu: the fields an older kernel does not print read 0.
    [Fact]
    public void A_cpu_line_parses_as_sysstat_reads_it()
    {
        Assert.Equal(new CpuStatSample(96005, 2578701, 53845, 3617879, 60648, 27891, 25853, 0, 0, 0),
            CpuStatSample.Parse("cpu  96005 2578701 53845 3617879 60648 27891 25853 0 0 0\n"));
        Assert.Equal(new CpuStatSample(1, 2, 3, 4, 5, 6, 7, 0, 0, 0), CpuStatSample.Parse("cpu 1 2 3 4 5 6 7"));
        Assert.Throws<FormatException>(() => CpuStatSample.Parse("cpu0 1 2 3 4 5 6 7"));
        Assert.Throws<FormatException>(() => CpuStatSample.Parse("cpu  1 2 x 4"));
        Assert.Null(CpuStatSample.ReadLine("/nonexistent/stat"));
    }

    [Fact]
    public async Task Cpu_online_files_show_the_topology_and_writing_them_is_a_hotplug_event()
    {
        // As /sys/devices/system/cpu: cpulists, and cpuN/online (kstrtobool) for present CPUs.
        var device = await Create("sd7", submitQueues: 2);
        Assert.Equal("0-3\n", Layer.ReadAttribute("devices/system/cpu/online"));
        Assert.Equal("0-3\n", Layer.ReadAttribute("/sys/devices/system/cpu/possible"));
        Assert.Equal("1\n", Layer.ReadAttribute("devices/system/cpu/cpu2/online"));
        Assert.Contains("devices/system/cpu/cpu3/online", Layer.ListAttributes("devices/"));

        await Layer.WriteAttributeAsync("devices/system/cpu/cpu2/online", "0\n");
        Assert.Equal("0-1,3\n", Layer.ReadAttribute("devices/system/cpu/online"));
        Assert.Equal("0\n", Layer.ReadAttribute("devices/system/cpu/cpu2/online"));
        Assert.False(Layer.CurrentTopology.IsOnline(2));
        Assert.True(device.Queue.HardwareContexts.Where(h => h.CpuMask.Contains(2)).All(h => h.IsInactive || h.CpuMask.Count > 1));
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu2/online", "on");
        Assert.Equal("0-3\n", Layer.ReadAttribute("devices/system/cpu/online"));

        // kstrtobool reads the first character (two for on/off), so yes, No, OFF and 10 are taken
        // as the kernel takes them; they were EINVAL (an outside bad-input audit).
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu2/online", "No\n");
        Assert.Equal("0-1,3\n", Layer.ReadAttribute("devices/system/cpu/online"));
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu2/online", "yes");
        Assert.Equal("0-3\n", Layer.ReadAttribute("devices/system/cpu/online"));
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu2/online", "OFF");
        Assert.Equal("0-1,3\n", Layer.ReadAttribute("devices/system/cpu/online"));
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu2/online", "10");
        Assert.Equal("0-3\n", Layer.ReadAttribute("devices/system/cpu/online"));

        // The current kstrtobool also takes t/T (true) and e/E (enabled), f/F (false) and d/D
        // (disabled); "false", "true", "disabled" and "Enabled" were EINVAL (an outside CLI fuzzing audit).
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu2/online", "false\n");
        Assert.Equal("0-1,3\n", Layer.ReadAttribute("devices/system/cpu/online"));
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu2/online", "true");
        Assert.Equal("0-3\n", Layer.ReadAttribute("devices/system/cpu/online"));
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu2/online", "disabled");
        Assert.Equal("0-1,3\n", Layer.ReadAttribute("devices/system/cpu/online"));
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu2/online", "Enabled");
        Assert.Equal("0-3\n", Layer.ReadAttribute("devices/system/cpu/online"));
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu2/online", "F");
        Assert.Equal("0-1,3\n", Layer.ReadAttribute("devices/system/cpu/online"));
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu2/online", "T");
        Assert.Equal("0-3\n", Layer.ReadAttribute("devices/system/cpu/online"));

        Assert.Equal(AttributeErrno.EINVAL, (await Refused("devices/system/cpu/cpu2/online", "maybe")).Errno);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("devices/system/cpu/cpu2/online", "\n")).Errno);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("devices/system/cpu/cpu2/online", "o")).Errno);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("devices/system/cpu/cpu2/online", " 1")).Errno);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("devices/system/cpu/cpu2/online", "2")).Errno);
        Assert.Equal(AttributeErrno.ENOENT, (await Refused("devices/system/cpu/cpu9/online", "1")).Errno);

        // Only the directory's own name: cpu02 is no file (it was read and written as cpu2's; an outside CLI fuzzing audit).
        Assert.Equal(AttributeErrno.ENOENT, (await Refused("devices/system/cpu/cpu02/online", "0")).Errno);
        Assert.Equal(AttributeErrno.ENOENT, Assert.Throws<AttributeException>(() => Layer.ReadAttribute("devices/system/cpu/cpu02/online")).Errno);
        Assert.Equal("0-3\n", Layer.ReadAttribute("devices/system/cpu/online"));
        Assert.Equal(AttributeErrno.EACCES, (await Refused("devices/system/cpu/online", "0-1")).Errno);
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu1/online", "0");
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu2/online", "0");
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu3/online", "0");
        Assert.Equal(AttributeErrno.EBUSY, (await Refused("devices/system/cpu/cpu0/online", "0")).Errno);
        Assert.Equal("0\n", Layer.ReadAttribute("devices/system/cpu/online"));
    }

    [Fact]
    public async Task The_sysfs_actor_answers_reads_writes_listings_and_hotplug_with_typed_replies()
    {
        await Create("sd6");
        var sysfs = Sys.ActorSelection(Layer.Guardian.Path / Sysfs.ActorName);

        sysfs.Tell(new Sysfs.List("block/sd6/queue/"), TestActor);
        Assert.Contains("block/sd6/queue/nr_requests", (await ExpectMsgAsync<Sysfs.Listing>()).Paths);
        sysfs.Tell(new Sysfs.Read("block/sd6/queue/io_timeout"), TestActor);
        Assert.Equal("5000\n", (await ExpectMsgAsync<Sysfs.Value>()).Text);
        sysfs.Tell(new Sysfs.Write("block/sd6/queue/nr_requests", "16\n"), TestActor);
        Assert.Equal(new Sysfs.Written("block/sd6/queue/nr_requests", "16\n"), await ExpectMsgAsync<Sysfs.Written>(TimeSpan.FromSeconds(20)));
        sysfs.Tell(new Sysfs.Write("block/sd6/queue/nr_requests", "lots"), TestActor);
        Assert.Equal("EINVAL", (await ExpectMsgAsync<Sysfs.Failed>()).Errno);

        // A message without its value (a peer's malformed one) is refused; a value of no bytes is
        // a write that changes nothing.
        sysfs.Tell(new Sysfs.Write("block/sd6/queue/nr_requests", null!), TestActor);
        Assert.Equal(("EINVAL", "the write carries no value"), await ExpectMsgAsync<Sysfs.Failed>() is var f ? (f.Errno, f.Message) : default);
        sysfs.Tell(new Sysfs.Write("block/sd6/queue/nr_requests", string.Empty), TestActor);
        Assert.Equal("16\n", (await ExpectMsgAsync<Sysfs.Written>()).Text);
        sysfs.Tell(new Sysfs.Read("block/sd6/queue/nope"), TestActor);
        Assert.Equal("ENOENT", (await ExpectMsgAsync<Sysfs.Failed>()).Errno);

        // Listing a device or directory that does not exist is ENOENT, as ls says (it was an empty listing).
        sysfs.Tell(new Sysfs.List("block/nope/"), TestActor);
        Assert.Equal("ENOENT", (await ExpectMsgAsync<Sysfs.Failed>()).Errno);
        sysfs.Tell(new Sysfs.Write("block/sd6/queue/nr_requests", "4294967295"), TestActor);
        Assert.Contains("4294967295 exceeds the tag depth", (await ExpectMsgAsync<Sysfs.Failed>()).Message);

        sysfs.Tell(new Sysfs.Hotplug(2, Online: false), TestActor);
        Assert.Equal("0-1,3", (await ExpectMsgAsync<CpuTopologyProtocol.TopologyChanged>()).Online);
        sysfs.Tell(new Sysfs.Hotplug(2, Online: true), TestActor);
        Assert.Equal("0-3", (await ExpectMsgAsync<CpuTopologyProtocol.TopologyChanged>()).Online);
        sysfs.Tell(new Sysfs.Hotplug(9, Online: true), TestActor);
        Assert.Equal("ENOENT", (await ExpectMsgAsync<Sysfs.Failed>()).Errno);
    }

    // An outside CLI fuzzing audit: io_poll_delay was EINVAL for 2147483648, where the kernel's
    // queue_poll_delay_store returns kstrtoint's ERANGE. The queue_var_store attributes (and
    // io_timeout's kstrtou32) turn every error into EINVAL, overflow included, and stay so.
    [Fact]
    public async Task A_number_past_the_type_is_ERANGE_where_the_store_returns_kstrtos_error_and_EINVAL_where_queue_var_store_parses()
    {
        await Create("sd10");
        const string Delay = "block/sd10/queue/io_poll_delay";
        foreach (var value in new[] { "2147483648", "2147483648\n", "-2147483649", "9223372036854775808", "-9223372036854775809", "99999999999999999999", "99999999999999999999x" })
        {
            var refused = await Refused(Delay, value);
            Assert.True(refused.Errno == AttributeErrno.ERANGE, $"'{value}': {refused.Errno} {refused.Reason}");
        }

        // (An empty value is no longer among them: a write of no bytes is taken and changes
        // nothing, as sysfs_kf_write returns 0 for it; A_write_of_no_bytes_... below.)
        foreach (var value in new[] { "-2", "-2147483648", "\n", "+", "-", "+-1", "-+1", " 1", "1 ", "0x10", "1\n\n", "1x" })
        {
            var refused = await Refused(Delay, value);
            Assert.True(refused.Errno == AttributeErrno.EINVAL, $"'{value}': {refused.Errno} {refused.Reason}");
        }

        foreach (var value in new[] { "2147483647", "-1", "-0", "+0", "+50\n" })
        {
            await Layer.WriteAttributeAsync(Delay, value);
            Assert.Equal("-1\n", Layer.ReadAttribute(Delay));
        }

        foreach (var attribute in new[] { "nr_requests", "rq_affinity", "io_timeout", "nomerges", "max_sectors_kb", "read_only", "rotational", "discard_max_bytes" })
        {
            var path = $"block/sd10/queue/{attribute}";
            var before = Layer.ReadAttribute(path);
            foreach (var value in new[] { "4294967296", "18446744073709551616", "99999999999999999999999x" })
            {
                var refused = await Refused(path, value);
                Assert.True(refused.Errno == AttributeErrno.EINVAL, $"{attribute} '{value}': {refused.Errno} {refused.Reason}");
            }

            Assert.Equal(before, Layer.ReadAttribute(path));
        }
    }

    // sysfs_kf_write returns 0 for a write of no bytes without calling the store, so
    // `echo -n "" > /sys/block/X/queue/nr_requests` succeeds and changes nothing. The empty value
    // went to the store, which refused it (EINVAL here, EINVAL for cpuN/online and md's new_dev).
    // The lookup and the permission check come first, as open(2) does them: a read-only attribute
    // is still EACCES, a directory EISDIR, a missing path ENOENT. "\n" (`echo "" >`) is one byte
    // and still goes to the store.
    [Fact]
    public async Task A_write_of_no_bytes_is_taken_and_changes_nothing_after_the_lookup_and_the_permission_check()
    {
        var device = await Create("sd14");
        string[] writable = ["nr_requests", "rq_affinity", "io_poll", "io_poll_delay", "io_timeout", "nomerges", "max_sectors_kb", "read_only", "rotational",
            "discard_max_bytes", "write_cache", "scheduler"];
        var before = writable.ToDictionary(a => a, a => Layer.ReadAttribute($"block/sd14/queue/{a}"));
        foreach (var attribute in writable)
        {
            await Layer.WriteAttributeAsync($"block/sd14/queue/{attribute}", string.Empty);
            await device.Attributes.WriteAsync($"block/sd14/queue/{attribute}", string.Empty);
            Assert.Equal(before[attribute], Layer.ReadAttribute($"block/sd14/queue/{attribute}"));
        }

        // Not a value it takes: io_poll refuses every write on a device without poll queues.
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd14/queue/io_poll", "0")).Errno);
        Assert.Equal(AttributeErrno.EINVAL, (await Refused("block/sd14/queue/nr_requests", "\n")).Errno);

        // Every other file of the tree is read-only: EACCES, empty or not.
        var readOnly = Layer.ListAttributes("block/sd14/").Concat(Layer.ListAttributes("kernel/debug/block/sd14/"))
            .Where(p => !writable.Any(a => p == $"block/sd14/queue/{a}"))
            .Concat(["uptime", "devices/system/cpu/online", "devices/system/cpu/possible", "devices/system/cpu/present"]).ToArray();
        Assert.Contains("block/sd14/queue/logical_block_size", readOnly);
        Assert.Contains("block/sd14/mq/0/nr_tags", readOnly);
        foreach (var path in readOnly)
        {
            var refused = await Refused(path, string.Empty);
            Assert.True(refused.Errno == AttributeErrno.EACCES, $"'{path}': {refused.Errno} {refused.Reason}");
        }

        Assert.Equal(AttributeErrno.EACCES, (await Assert.ThrowsAsync<AttributeException>(async () => await device.Attributes.WriteAsync("block/sd14/size", string.Empty))).Errno);
        Assert.Equal(AttributeErrno.EISDIR, (await Refused("block/sd14/queue", string.Empty)).Errno);
        Assert.Equal(AttributeErrno.ENOENT, (await Refused("block/sd14/queue/nope", string.Empty)).Errno);
        Assert.Equal(AttributeErrno.ENOENT, (await Refused("block/nosuch/queue/nr_requests", string.Empty)).Errno);
        Assert.Equal(AttributeErrno.ENOTDIR, (await Refused("block/sd14/queue/nr_requests/", string.Empty)).Errno);

        // A CPU's online file: no hotplug event; its lookup still applies.
        var topology = Layer.CurrentTopology;
        await Layer.WriteAttributeAsync("devices/system/cpu/cpu2/online", string.Empty);
        Assert.Same(topology, Layer.CurrentTopology);
        Assert.Equal("0-3\n", Layer.ReadAttribute("devices/system/cpu/online"));
        Assert.Equal(AttributeErrno.ENOENT, (await Refused("devices/system/cpu/cpu9/online", string.Empty)).Errno);

        // Through the sysfs actor, as `actorblk sysfs write PATH ''` sends it.
        var sysfs = Sys.ActorSelection(Layer.Guardian.Path / Sysfs.ActorName);
        sysfs.Tell(new Sysfs.Write("block/sd14/queue/nr_requests", string.Empty), TestActor);
        Assert.Equal(new Sysfs.Written("block/sd14/queue/nr_requests", before["nr_requests"]), await ExpectMsgAsync<Sysfs.Written>());
        sysfs.Tell(new Sysfs.Write("block/sd14/queue/logical_block_size", string.Empty), TestActor);
        Assert.Equal("EACCES", (await ExpectMsgAsync<Sysfs.Failed>()).Errno);
        Assert.Equal(64, device.Queue.NrRequests);
    }

    // The same audit: `actorblk sysfs cat block/nullb0/queue` answered ENOENT, where cat on a sysfs
    // directory says "Is a directory" (EISDIR), and so does open(2) of one for writing.
    [Fact]
    public async Task A_directory_is_EISDIR_to_a_read_and_a_write_through_the_layer_the_device_and_the_sysfs_actor()
    {
        var device = await Create("sd11");
        foreach (var directory in new[] { "block/sd11/queue", "block/sd11/queue/", "/sys/block/sd11", "block/sd11/mq/0", "block", "kernel/debug/block/sd11/hctx0",
                     "kernel/debug", "devices/system/cpu", "devices/system/cpu/cpu0", "devices", "/", "/sys" })
        {
            var read = Assert.Throws<AttributeException>(() => Layer.ReadAttribute(directory));
            Assert.True(read.Errno == AttributeErrno.EISDIR, $"read '{directory}': {read.Errno} {read.Reason}");
            var write = await Refused(directory, "1");
            Assert.True(write.Errno == AttributeErrno.EISDIR, $"write '{directory}': {write.Errno} {write.Reason}");
        }

        // The device's own tree says the same; what names nothing stays ENOENT ("" too, as open("")).
        Assert.Equal(AttributeErrno.EISDIR, Assert.Throws<AttributeException>(() => device.Queue.Attributes.Read("block/sd11/queue")).Errno);
        Assert.Equal(AttributeErrno.EISDIR, (await Assert.ThrowsAsync<AttributeException>(async () => await device.Queue.Attributes.WriteAsync("block/sd11/mq/0", "1"))).Errno);
        foreach (var missing in new[] { "", "block/sd11/queu", "block/sd11/queue/nr", "block/nosuch", "devices/system/cpu/cpu9", "kernel/debug/block/sd11/hctx0/cpu9" })
        {
            Assert.Equal(AttributeErrno.ENOENT, Assert.Throws<AttributeException>(() => Layer.ReadAttribute(missing)).Errno);
            Assert.Equal(AttributeErrno.ENOENT, (await Refused(missing, "1")).Errno);
        }

        var sysfs = Sys.ActorSelection(Layer.Guardian.Path / Sysfs.ActorName);
        sysfs.Tell(new Sysfs.Read("block/sd11/queue"), TestActor);
        var failed = await ExpectMsgAsync<Sysfs.Failed>();
        Assert.Equal(("EISDIR", "is a directory"), (failed.Errno, failed.Message));
        sysfs.Tell(new Sysfs.Write("block/sd11/queue", "1"), TestActor);
        Assert.Equal("EISDIR", (await ExpectMsgAsync<Sysfs.Failed>()).Errno);
    }

    // The same audit: "block/nullb0/size\n" was read as block/nullb0/size (the path was trimmed of
    // blanks); to open(2) a blank or control character is part of the name, and no attribute has one.
    [Fact]
    public async Task A_path_with_a_blank_or_a_control_character_names_no_attribute()
    {
        var device = await Create("sd12");
        foreach (var path in new[] { "block/sd12/queue/nr_requests\n", " block/sd12/queue/nr_requests", "block/sd12/queue/nr_requests ", "\tblock/sd12/queue/nr_requests",
                     "block/sd12/queue/nr_requests\r", "block/sd12/queue/nr_requests\0", "block/sd12/queue/nr_requests\v", "block/sd12/queue/nr_requests\u00a0", "\n/sys/block/sd12/queue/nr_requests" })
        {
            var read = Assert.Throws<AttributeException>(() => Layer.ReadAttribute(path));
            Assert.True(read.Errno == AttributeErrno.ENOENT, $"read '{path}': {read.Errno} {read.Reason}");
            var write = await Refused(path, "32");
            Assert.True(write.Errno == AttributeErrno.ENOENT, $"write '{path}': {write.Errno} {write.Reason}");
            Assert.Empty(Layer.ListAttributes(path));
        }

        Assert.Equal(64, device.Queue.NrRequests);
        Assert.Equal("64\n", Layer.ReadAttribute("/sys/block/sd12/queue/nr_requests"));
    }

    // A path through a file as if it were a directory is ENOTDIR to open(2): "size/" read the size,
    // and "size/x" was ENOENT.
    [Fact]
    public async Task A_path_through_an_attribute_as_a_directory_is_ENOTDIR()
    {
        var device = await Create("sd13");
        foreach (var path in new[] { "block/sd13/queue/nr_requests/", "/sys/block/sd13/queue/nr_requests//", "block/sd13/queue/nr_requests/x", "block/sd13/size/x/y",
                     "uptime/", "devices/system/cpu/online/", "devices/system/cpu/cpu0/online/x" })
        {
            var read = Assert.Throws<AttributeException>(() => Layer.ReadAttribute(path));
            Assert.True(read.Errno == AttributeErrno.ENOTDIR, $"read '{path}': {read.Errno} {read.Reason}");
            var write = await Refused(path, "32");
            Assert.True(write.Errno == AttributeErrno.ENOTDIR, $"write '{path}': {write.Errno} {write.Reason}");
        }

        Assert.Equal(64, device.Queue.NrRequests);
        Assert.Equal(AttributeErrno.ENOENT, Assert.Throws<AttributeException>(() => Layer.ReadAttribute("block/sd13/queue/nr_request/x")).Errno);
        var sysfs = Sys.ActorSelection(Layer.Guardian.Path / Sysfs.ActorName);
        sysfs.Tell(new Sysfs.Read("block/sd13/size/"), TestActor);
        var failed = await ExpectMsgAsync<Sysfs.Failed>();
        Assert.Equal(("ENOTDIR", "not a directory"), (failed.Errno, failed.Message));
    }

    // Linux's path lookup resolves "." and ".." ("block/nullb0/queue/../size" is the size); they
    // were taken as names, so every such path was ENOENT (noted by an audit). The tree has no
    // symlinks (Linux's /sys/block/<dev> is one), so ".." goes up the path as written, and at the
    // root ("/" and "/sys") it stays there. As in the kernel each "." or ".." must follow a
    // directory: after a file ENOTDIR, after a name the tree does not have ENOENT, even where the
    // rest of the path would lead back to an attribute.
    [Fact]
    public async Task Dot_and_dot_dot_are_resolved_within_the_tree_after_directories_only()
    {
        var device = await Create("sd15");
        const string Size = "131072\n"; // 64 MiB in 512-byte sectors
        Assert.Equal(Size, Layer.ReadAttribute("block/sd15/size"));
        foreach (var path in new[] { "block/sd15/queue/../size", "block/./sd15/size", "./block/sd15/size", "../block/sd15/size", "/sys/../block/sd15/size",
                     "/sys/../sys/block/sd15/size", "/../../sys/block/sd15/./size", "block/sd15/mq/0/../../queue/../size", "block/sd15/queue/./../size",
                     "kernel/debug/../../block/sd15/size", "devices/system/cpu/cpu0/../../../../block//sd15/./size" })
        {
            Assert.True(Layer.ReadAttribute(path) == Size, $"read '{path}'");
        }

        // A write goes where the path leads, and so does a listing.
        await Layer.WriteAttributeAsync("block/sd15/mq/../queue/./nr_requests", "32");
        Assert.Equal(32, device.Queue.NrRequests);
        Assert.Equal(Layer.ListAttributes("block/sd15/queue/"), Layer.ListAttributes("block/sd15/mq/../queue/"));
        Assert.Equal(22, Layer.ListAttributes("/sys/block/sd15/./queue/").Count);

        foreach (var directory in new[] { "block/sd15/queue/..", "block/sd15/queue/.", "block/sd15/queue/../", "..", ".", "/sys/..", "block/..", "devices/system/cpu/cpu1/.." })
        {
            var read = Assert.Throws<AttributeException>(() => Layer.ReadAttribute(directory));
            Assert.True(read.Errno == AttributeErrno.EISDIR, $"read '{directory}': {read.Errno} {read.Reason}");
            var write = await Refused(directory, "1");
            Assert.True(write.Errno == AttributeErrno.EISDIR, $"write '{directory}': {write.Errno} {write.Reason}");
        }

        foreach (var path in new[] { "block/sd15/size/..", "block/sd15/size/.", "block/sd15/size/../size", "block/sd15/size/x/..", "uptime/..",
                     "devices/system/cpu/online/../online", "block/sd15/queue/../size/", "block/sd15/queue/nr_requests/./" })
        {
            var read = Assert.Throws<AttributeException>(() => Layer.ReadAttribute(path));
            Assert.True(read.Errno == AttributeErrno.ENOTDIR, $"read '{path}': {read.Errno} {read.Reason}");
            var write = await Refused(path, "8");
            Assert.True(write.Errno == AttributeErrno.ENOTDIR, $"write '{path}': {write.Errno} {write.Reason}");
        }

        foreach (var path in new[] { "block/nope/../sd15/size", "block/sd15/queu/../size", "/sys/sys/block/sd15/..", "devices/system/cpu/cpu9/../online", "proc/../block/sd15/size" })
        {
            var read = Assert.Throws<AttributeException>(() => Layer.ReadAttribute(path));
            Assert.True(read.Errno == AttributeErrno.ENOENT, $"read '{path}': {read.Errno} {read.Reason}");
            var write = await Refused(path, "8");
            Assert.True(write.Errno == AttributeErrno.ENOENT, $"write '{path}': {write.Errno} {write.Reason}");
            Assert.Empty(Layer.ListAttributes(path));
        }

        Assert.Equal(32, device.Queue.NrRequests);
        Assert.Empty(Layer.ListAttributes("block/sd15/size/../"));

        var sysfs = Sys.ActorSelection(Layer.Guardian.Path / Sysfs.ActorName);
        sysfs.Tell(new Sysfs.Read("/sys/block/sd15/queue/../size"), TestActor);
        Assert.Equal(Size, (await ExpectMsgAsync<Sysfs.Value>()).Text);
        sysfs.Tell(new Sysfs.Write("block/sd15/queue/./../queue/nr_requests", "16"), TestActor);
        Assert.Equal("16\n", (await ExpectMsgAsync<Sysfs.Written>()).Text);
        sysfs.Tell(new Sysfs.Read("block/sd15/size/.."), TestActor);
        var failed = await ExpectMsgAsync<Sysfs.Failed>();
        Assert.Equal(("ENOTDIR", "not a directory"), (failed.Errno, failed.Message));
        sysfs.Tell(new Sysfs.List("block/sd15/queue/../mq/0/"), TestActor);
        Assert.Equal(["block/sd15/mq/0/cpu_list", "block/sd15/mq/0/nr_reserved_tags", "block/sd15/mq/0/nr_tags"], (await ExpectMsgAsync<Sysfs.Listing>()).Paths);
    }

    // Choosing between ENOENT, EISDIR and ENOTDIR enumerated every path of every device for each
    // failed lookup, so a client retrying a missing path in a loop made the node list its whole
    // tree (devices x attributes) per miss. The choice now looks only at the path's own prefixes:
    // the node's own files, the CPU directory, or the one device the path names (a binary search
    // of its snapshot). Only a listing enumerates the tree.
    [Fact]
    public async Task A_failed_lookup_looks_at_the_paths_own_prefixes_and_never_enumerates_the_tree()
    {
        var device = await Create("sd16");
        await Create("sd17");
        await Create("sd170");
        var sysfs = Sys.ActorSelection(Layer.Guardian.Path / Sysfs.ActorName);
        (string Path, AttributeErrno Errno)[] misses =
        [
            ("block/sd16/queue/nope", AttributeErrno.ENOENT), ("block/nosuch/queue/nr_requests", AttributeErrno.ENOENT), ("proc/meminfo", AttributeErrno.ENOENT),
            ("block/sd16/queu", AttributeErrno.ENOENT), ("block/sd16/queue/nr_request/x", AttributeErrno.ENOENT), ("devices/system/cpu/cpu9", AttributeErrno.ENOENT),
            ("devices/system/cpu/cpu02/online", AttributeErrno.ENOENT), ("kernel/debug/block/sd16/hctx0/cpu9", AttributeErrno.ENOENT), ("", AttributeErrno.ENOENT),
            ("block/sd16/queue", AttributeErrno.EISDIR), ("/sys/block/sd16", AttributeErrno.EISDIR), ("block", AttributeErrno.EISDIR), ("kernel/debug", AttributeErrno.EISDIR),
            ("kernel/debug/block/sd17/hctx0", AttributeErrno.EISDIR), ("devices/system/cpu/cpu0", AttributeErrno.EISDIR), ("devices", AttributeErrno.EISDIR), ("/", AttributeErrno.EISDIR),
            ("block/sd16/size/", AttributeErrno.ENOTDIR), ("block/sd17/queue/nr_requests/x", AttributeErrno.ENOTDIR), ("uptime/", AttributeErrno.ENOTDIR),
            ("devices/system/cpu/online/", AttributeErrno.ENOTDIR), ("devices/system/cpu/cpu0/online/x", AttributeErrno.ENOTDIR),
        ];

        var before = Layer.TreeEnumerations;
        foreach (var (path, errno) in misses)
        {
            var read = Assert.Throws<AttributeException>(() => Layer.ReadAttribute(path));
            Assert.True(read.Errno == errno, $"read '{path}': {read.Errno} {read.Reason}");
            var write = await Refused(path, "1");
            Assert.True(write.Errno == errno, $"write '{path}': {write.Errno} {write.Reason}");
            sysfs.Tell(new Sysfs.Read(path), TestActor);
            Assert.Equal(errno.ToString(), (await ExpectMsgAsync<Sysfs.Failed>()).Errno);
        }

        Assert.Equal("64\n", Layer.ReadAttribute("block/sd16/queue/nr_requests"));
        Assert.Equal(64, device.Queue.NrRequests);
        Assert.Equal(before, Layer.TreeEnumerations);

        // A listing under one device's name lists that device only, a missing one included (the
        // sysfs actor answers ENOENT for it): before, each such listing enumerated the tree.
        Assert.All(Assert.IsAssignableFrom<IReadOnlyList<string>>(Layer.ListAttributes("block/sd17/")), path => Assert.StartsWith("block/sd17/", path));
        Assert.Contains("block/sd17/size", Layer.ListAttributes("block/sd17/queue/.."));
        Assert.DoesNotContain("block/sd170/size", Layer.ListAttributes("block/sd17/queue/.."));
        Assert.All(Assert.IsAssignableFrom<IReadOnlyList<string>>(Layer.ListAttributes("kernel/debug/block/sd16/hctx0/")), path => Assert.StartsWith("kernel/debug/block/sd16/hctx0/", path));
        Assert.NotEmpty(Layer.ListAttributes("kernel/debug/block/sd16/hctx0/"));
        Assert.Empty(Layer.ListAttributes("block/nosuch/"));
        sysfs.Tell(new Sysfs.List("block/nosuch/queue/"), TestActor);
        Assert.Equal("ENOENT", (await ExpectMsgAsync<Sysfs.Failed>()).Errno);

        // Through an attribute, as ls says: ENOTDIR (it was ENOENT).
        foreach (var through in new[] { "block/sd16/size/", "block/sd16/size/..", "block/sd16/size/x/" })
        {
            sysfs.Tell(new Sysfs.List(through), TestActor);
            Assert.Equal(("ENOTDIR", through), await ExpectMsgAsync<Sysfs.Failed>() is var f ? (f.Errno, through) : default);
        }
        Assert.Equal(before, Layer.TreeEnumerations);

        // The counter counts: a listing of the root enumerates the tree once. (A prefix that may
        // be the start of several names, "block/sd1", did too: it now reads the trees it can reach.)
        Assert.Contains("block/sd17/size", Layer.ListAttributes("block/sd1"));
        Assert.Equal(before, Layer.TreeEnumerations);
        Assert.Contains("block/sd17/size", Layer.ListAttributes());
        Assert.Equal(before + 1, Layer.TreeEnumerations);
    }

    // A listing whose prefix names no device in full ("block/nullb", "block/nope", "nosuch")
    // enumerated every path of every device and then filtered them, so a client listing a prefix
    // nothing is under in a loop made the node list its whole tree per request. Now only the root
    // enumerates the tree; another prefix reads the trees of the devices it can reach (none for a
    // prefix that matches no device, and none for a directory the tree does not have: ENOENT, as
    // ls says), and lists exactly what filtering the whole tree lists.
    [Fact]
    public async Task A_listing_reads_only_the_device_trees_its_prefix_can_reach_and_lists_what_it_listed()
    {
        await Create("sd18");
        await Create("sd19");
        await Create("vd18");
        var sysfs = Sys.ActorSelection(Layer.Guardian.Path / Sysfs.ActorName);
        var (enumerations, trees) = (Layer.TreeEnumerations, Layer.ListedDeviceTrees);
        foreach (var prefix in new[] { "block/zz", "block/zz/", "block/sd2", "block/sd18x", "block/sd18x/", "kernel/debug/block/q", "kernel/debug/block/sd18/nope/",
                     "kernel/nope", "kernel/nope/", "nosuch", "nosuch/", "/sys/block/x", "devices/system/cpu/cpu9/", "block/sd18/nope/", "block/sd18/queue/nope/",
                     "block/vd18/mq/9/", "sys/nosuch/" })
        {
            Assert.True(Layer.ListAttributes(prefix).Count == 0, prefix);
            sysfs.Tell(new Sysfs.List(prefix), TestActor);
            Assert.Equal((prefix, "ENOENT"), await ExpectMsgAsync<Sysfs.Failed>() is var f ? (prefix, f.Errno) : default);
        }

        Assert.Equal((enumerations, trees), (Layer.TreeEnumerations, Layer.ListedDeviceTrees));

        // A prefix that may start several names reads those devices' trees only.
        Assert.Contains("block/sd19/size", Layer.ListAttributes("block/sd1"));
        Assert.Equal(trees + 2, Layer.ListedDeviceTrees);
        Assert.Contains("kernel/debug/block/vd18/hctx0/state", Layer.ListAttributes("kernel/debug/block/v"));
        Assert.Equal(trees + 3, Layer.ListedDeviceTrees);
        Assert.Contains("devices/system/cpu/cpu3/online", Layer.ListAttributes("devices/system/cpu/cpu"));
        Assert.Equal(trees + 3, Layer.ListedDeviceTrees);
        Assert.Equal(enumerations, Layer.TreeEnumerations);

        // What each lists is what filtering the whole tree lists: every directory of the tree, with
        // and without its slash, and every start of a few paths.
        var all = Layer.ListAttributes();
        Assert.Equal(enumerations + 1, Layer.TreeEnumerations);
        var prefixes = new SortedSet<string>(StringComparer.Ordinal) { "b", "k", "d", "u", "s", "block/", "kernel/debug/block/sd", "devices/system/cpu/cpu" };
        foreach (var path in all)
        {
            for (var slash = path.IndexOf('/', StringComparison.Ordinal); slash > 0; slash = path.IndexOf('/', slash + 1))
            {
                prefixes.Add(path[..slash]);
                prefixes.Add(path[..(slash + 1)]);
            }
        }

        foreach (var path in new[] { "block/sd18/queue/nr_requests", "kernel/debug/block/sd19/hctx0/cpu1/dispatched", "devices/system/cpu/cpu1/online", "uptime" })
        {
            for (var length = 1; length <= path.Length; length++)
            {
                prefixes.Add(path[..length]);
            }
        }

        foreach (var prefix in prefixes)
        {
            var filtered = all.Where(path => path.StartsWith(prefix, StringComparison.Ordinal)).ToArray();
            Assert.True(filtered.SequenceEqual(Layer.ListAttributes(prefix)), prefix);
        }

        Assert.Equal(enumerations + 1, Layer.TreeEnumerations);
    }

    // The per-device API (device.Attributes, and its snapshot) took exact paths only, with the
    // surrounding slashes dropped, where the node's tree resolves "/sys/", "//", "." and "..":
    // "/sys/block/nullb0/size" and "block/nullb0/queue/../size" were ENOENT there, and
    // "block/nullb0/size/" read the size (the node's tree says ENOTDIR). A device's tree now looks
    // a path up as the node's does, within its own tree: what it answers is what the node answers,
    // but a path that leads to, or walks through, another device's directory names nothing in it.
    [Fact]
    public async Task A_devices_own_tree_looks_a_path_up_as_the_nodes_does_within_its_tree()
    {
        var device = await Create("sd20");
        await Create("sd21");
        var attributes = device.Attributes;
        const string Size = "131072\n";
        foreach (var path in new[] { "block/sd20/size", "/sys/block/sd20/size", "sys/block/sd20/size", "block//sd20///size", "/block/sd20/size", "block/sd20/queue/../size",
                     "block/./sd20/size", "../block/sd20/size", "/sys/../block/sd20/size", "block/sd20/mq/0/../../queue/./../size", "kernel/debug/../../block/sd20/size" })
        {
            Assert.True(attributes.Read(path) == Size, $"read '{path}'");
            Assert.True(attributes.Current!.Read(path) == Size, $"snapshot read '{path}'");
            Assert.Equal(Layer.ReadAttribute(path), attributes.Read(path));
        }

        await attributes.WriteAsync("/sys/block/sd20/mq/../queue/./nr_requests", "32");
        Assert.Equal(32, device.Queue.NrRequests);
        Assert.Equal("32\n", attributes.Read("sys/block//sd20/queue/nr_requests"));

        (string Path, AttributeErrno Errno)[] refused =
        [
            ("block/sd20/queue/..", AttributeErrno.EISDIR), ("/sys/block/sd20/", AttributeErrno.EISDIR), ("block/sd20/queue/.", AttributeErrno.EISDIR), ("/sys", AttributeErrno.EISDIR),
            ("/", AttributeErrno.EISDIR), ("block", AttributeErrno.EISDIR), ("kernel/debug/block/sd20/hctx0/", AttributeErrno.EISDIR),
            ("block/sd20/size/", AttributeErrno.ENOTDIR), ("block/sd20/size/..", AttributeErrno.ENOTDIR), ("block/sd20/queue/nr_requests/x", AttributeErrno.ENOTDIR),
            ("/sys/block/sd20/queue/nr_requests//", AttributeErrno.ENOTDIR), ("block/sd20/queue/../size/", AttributeErrno.ENOTDIR),
            ("", AttributeErrno.ENOENT), ("block/sd20/nope/../size", AttributeErrno.ENOENT), ("/sys/sys/block/sd20/size", AttributeErrno.ENOENT), ("block/sd20/size ", AttributeErrno.ENOENT),
            ("devices/system/cpu/online", AttributeErrno.ENOENT),
        ];
        foreach (var (path, errno) in refused)
        {
            var read = Assert.Throws<AttributeException>(() => attributes.Read(path));
            Assert.True(read.Errno == errno, $"read '{path}': {read.Errno} {read.Reason}");
            var write = await Assert.ThrowsAsync<AttributeException>(async () => await attributes.WriteAsync(path, "8"));
            Assert.True(write.Errno == errno, $"write '{path}': {write.Errno} {write.Reason}");
            if (!path.StartsWith("devices/", StringComparison.Ordinal))
            {
                // The node's tree says the same (its CPU directory is not the device's).
                Assert.Equal(errno, Assert.Throws<AttributeException>(() => Layer.ReadAttribute(path)).Errno);
            }
        }

        // The path in a refusal is the one the walk reached, as the node's tree gives it.
        Assert.Equal("block/sd20/queue", Assert.Throws<AttributeException>(() => attributes.Read("/sys/block/sd20/mq/../queue/")).Path);

        // Another device's paths name nothing in this one's tree, where the node finds them.
        foreach (var path in new[] { "block/sd21/size", "block/sd20/../sd21/size", "block/sd21/../sd20/size" })
        {
            Assert.Equal(AttributeErrno.ENOENT, Assert.Throws<AttributeException>(() => attributes.Read(path)).Errno);
            Assert.Equal(Size, Layer.ReadAttribute(path));
        }

        Assert.Equal(32, device.Queue.NrRequests);
    }

    private static bool IsOfflineCtx(IBlockDevice device, int cpu) =>
        !device.Queue.HardwareContexts.Any(h => h.Contexts.Any(c => c.Cpu == cpu));
}
