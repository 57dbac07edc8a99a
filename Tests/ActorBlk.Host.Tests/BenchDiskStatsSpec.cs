using System.Text.Json;
using ActorBlk.Hardware.Requests;
using ActorBlk.Host.Bench;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// fio's disk utilisation for a job's file on a disk (fio 3.33 diskutil.c, stat.c
/// <c>show_disk_util</c>, <c>print_disk_util</c>, <c>json_array_add_disk_util</c>): a
/// "Disk stats (read/write):" section at the end of the normal report, the disk's fields on the
/// terse line after the latency groups and before continue_on_error's, a "disk_util" array in the
/// JSON; none for a device on no disk (the null device, NBD). The bench printed none for any device.
/// The figures here are fixed; fio 3.33 printed util=32.92% (JSON 32.921811) for io_ticks 80 over 243 ms.
/// </summary>
public sealed class BenchDiskStatsSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(120);

    private static readonly DiskUtil Vda = new("vda", new DiskUtilStats(787, 141, 0, 8, 105, 68, IoTicks: 80, TimeInQueue: 175, Msec: 243));

    [Theory]
    [InlineData(80UL, 243UL, 32.921810699588477)]
    [InlineData(300UL, 250UL, 100.0)]   // io_ticks past the interval (fio clamps at 100)
    [InlineData(5UL, 0UL, 0.0)]         // no millisecond: 0, as fio's if (dus->s.msec)
    public void Util_is_fios_share_of_the_milliseconds_with_io_in_flight(ulong ioTicks, ulong msec, double util) =>
        Assert.Equal(util, new DiskUtilStats(0, 0, 0, 0, 0, 0, ioTicks, 0, msec).Util, precision: 12);

    [Fact]
    public void The_figures_are_the_differences_of_the_stat_file()
    {
        var before = Hardware.Queues.DiskStatSample.Parse("     100        2      800       50      200        4     1600       60        0       70      110\n");
        var after = Hardware.Queues.DiskStatSample.Parse("     887        2     7096      155      341       12     2728      128        1      150      285\n");
        Assert.Equal(new DiskUtilStats(787, 141, 0, 8, 105, 68, 80, 175, 243), DiskUtilStats.Between(before, after, 243));
    }

    [Fact]
    public void The_normal_report_ends_with_fios_disk_stats_section()
    {
        var text = BenchReport.Human(Result() with { Disks = [Vda] });
        Assert.EndsWith("msec\n\nDisk stats (read/write):\n  vda: ios=787/141, merge=0/8, ticks=105/68, in_queue=175, util=32.92%\n", text, StringComparison.Ordinal);
        Assert.DoesNotContain("Disk stats", BenchReport.Human(Result()), StringComparison.Ordinal);
    }

    [Fact]
    public void The_terse_line_has_the_disk_after_the_latency_groups_and_before_the_error_fields()
    {
        var plain = BenchReport.Terse(Result()).TrimEnd('\n');
        var failed = Result() with { FirstError = BlockStatus.IoError };
        failed.Read.Failed = 1;

        Assert.Equal(plain + ";vda;787;141;0;8;105;68;175;32.92%\n", BenchReport.Terse(Result() with { Disks = [Vda] }));
        Assert.EndsWith(";0.00%;vda;787;141;0;8;105;68;175;32.92%;1;5\n", BenchReport.Terse(failed with { Disks = [Vda] }), StringComparison.Ordinal);
        foreach (var version in new[] { 4, 5 })
        {
            Assert.EndsWith(";vda;787;141;0;8;105;68;175;32.92%\n", BenchReport.Terse(Result(version) with { Disks = [Vda] }), StringComparison.Ordinal);
        }

        // Version 2 has none (stat.c: ver >= 3).
        Assert.Equal(BenchReport.Terse(Result(2)), BenchReport.Terse(Result(2) with { Disks = [Vda] }));
    }

    [Fact]
    public void The_json_has_fios_disk_util_array_after_the_jobs()
    {
        var json = BenchReport.Json(Result() with { Disks = [Vda] });
        var root = JsonDocument.Parse(json).RootElement;
        Assert.Equal(["fio version", "timestamp", "timestamp_ms", "time", "global options", "jobs", "disk_util", "actorblk"], root.EnumerateObject().Select(p => p.Name));
        var disk = Assert.Single(root.GetProperty("disk_util").EnumerateArray());
        Assert.Equal(
            ["name", "read_ios", "write_ios", "read_merges", "write_merges", "read_ticks", "write_ticks", "in_queue", "util"],
            disk.EnumerateObject().Select(p => p.Name));
        Assert.Equal("vda", disk.GetProperty("name").GetString());
        Assert.Equal((787, 141, 0, 8, 105, 68, 175), (disk.GetProperty("read_ios").GetInt32(), disk.GetProperty("write_ios").GetInt32(), disk.GetProperty("read_merges").GetInt32(),
            disk.GetProperty("write_merges").GetInt32(), disk.GetProperty("read_ticks").GetInt32(), disk.GetProperty("write_ticks").GetInt32(), disk.GetProperty("in_queue").GetInt32()));
        Assert.Contains("\"util\": 32.921811", json, StringComparison.Ordinal);   // fio's json.c "%f"

        Assert.False(JsonDocument.Parse(BenchReport.Json(Result())).RootElement.TryGetProperty("disk_util", out _));
    }

    // fio's show_agg_stats: a disk with slaves (dm, md) is indented two more and followed by its
    // slaves' sums over their number and the busiest slave's util; the slaves follow as disks.
    [Fact]
    public void A_disk_with_slaves_carries_their_aggregate_as_fio_prints_it()
    {
        var vdb = new DiskUtilStats(100, 40, 1, 3, 20, 10, IoTicks: 125, TimeInQueue: 30, Msec: 250);
        var dm = new DiskUtil("dm-0", new DiskUtilStats(880, 180, 0, 0, 120, 70, 90, 190, 250), [Vda.Stats, vdb]);
        var disks = new[] { dm, Vda, new DiskUtil("vdb", vdb) };

        var text = BenchReport.Human(Result() with { Disks = disks });
        Assert.EndsWith(
            "\nDisk stats (read/write):\n"
            + "    dm-0: ios=880/180, merge=0/0, ticks=120/70, in_queue=190, util=36.00%, aggrios=443/90, aggrmerge=0/5, aggrticks=62/39, aggrin_queue=102, aggrutil=50.00%\n"
            + "  vda: ios=787/141, merge=0/8, ticks=105/68, in_queue=175, util=32.92%\n"
            + "  vdb: ios=100/40, merge=1/3, ticks=20/10, in_queue=30, util=50.00%\n",
            text,
            StringComparison.Ordinal);

        Assert.EndsWith(";dm-0;880;180;0;0;120;70;190;36.00%;slaves;443;90;0;5;62;39;102;50.00%;vda;787;141;0;8;105;68;175;32.92%;vdb;100;40;1;3;20;10;30;50.00%\n",
            BenchReport.Terse(Result() with { Disks = disks }), StringComparison.Ordinal);

        var json = JsonDocument.Parse(BenchReport.Json(Result() with { Disks = disks })).RootElement.GetProperty("disk_util");
        Assert.Equal(3, json.GetArrayLength());
        Assert.Equal(
            ["name", "read_ios", "write_ios", "read_merges", "write_merges", "read_ticks", "write_ticks", "in_queue", "util",
             "aggr_read_ios", "aggr_write_ios", "aggr_read_merges", "aggr_write_merge", "aggr_read_ticks", "aggr_write_ticks", "aggr_in_queue", "aggr_util"],
            json[0].EnumerateObject().Select(p => p.Name));
        Assert.Equal(50.0, json[0].GetProperty("aggr_util").GetDouble());
    }

    // diskutil.c: the file's device through sysfs, a partition's parent disk, a dm device's slaves
    // (a slave partition standing for its disk). A fake sysfs tree, laid out as the kernel's.
    [Fact]
    public void The_disk_is_found_through_sysfs_as_fio_finds_it()
    {
        using var dir = new TempDirectory("sysfs");
        var sys = dir.File("sys");
        Block(sys, "devices/pci0/block/sda", disk: true);
        Block(sys, "devices/pci0/block/sda/sda1", disk: false);
        Block(sys, "devices/pci1/block/vdb", disk: true);
        Block(sys, "devices/virtual/block/dm-0", disk: true);
        Directory.CreateDirectory(Path.Combine(sys, "dev/block"));
        File.CreateSymbolicLink(Path.Combine(sys, "dev/block/8:0"), "../../devices/pci0/block/sda");
        File.CreateSymbolicLink(Path.Combine(sys, "dev/block/8:1"), "../../devices/pci0/block/sda/sda1");
        File.CreateSymbolicLink(Path.Combine(sys, "dev/block/253:0"), "../../devices/virtual/block/dm-0");
        Directory.CreateDirectory(Path.Combine(sys, "devices/virtual/block/dm-0/slaves"));
        File.CreateSymbolicLink(Path.Combine(sys, "devices/virtual/block/dm-0/slaves/sda1"), "../../../../pci0/block/sda/sda1");
        File.CreateSymbolicLink(Path.Combine(sys, "devices/virtual/block/dm-0/slaves/vdb"), "../../../../pci1/block/vdb");

        Assert.Equal(["sda"], DiskWatch.Disks(8, 0, sys).Select(d => d.Name));
        Assert.Equal(["sda"], DiskWatch.Disks(8, 1, sys).Select(d => d.Name));      // the partition's disk
        var dm = DiskWatch.Disks(253, 0, sys);
        Assert.Equal(["dm-0", "sda", "vdb"], dm.Select(d => d.Name));
        Assert.Equal(["sda", "vdb"], dm[0].Slaves.Select(d => d.Name));
        Assert.Empty(DiskWatch.Disks(0, 42, sys));                                 // tmpfs, overlayfs: no block device

        // A slave link that cannot be resolved (a loop): no disk section, not an exception that
        // skipped the bench's teardown (a review).
        Block(sys, "devices/virtual/block/dm-1", disk: true);
        Directory.CreateDirectory(Path.Combine(sys, "devices/virtual/block/dm-1/slaves"));
        File.CreateSymbolicLink(Path.Combine(sys, "devices/virtual/block/dm-1/slaves/loop"), "loop");
        File.CreateSymbolicLink(Path.Combine(sys, "dev/block/253:1"), "../../devices/virtual/block/dm-1");
        Assert.ThrowsAny<IOException>(() => DiskWatch.Disks(253, 1, sys));
        Assert.Null(DiskWatch.Of(253, 1, sys));

        // The figures: the stat files' differences since the watch started.
        var watch = DiskWatch.Of(253, 0, sys)!;
        File.WriteAllText(Path.Combine(sys, "devices/pci0/block/sda/stat"), "      10        1       80        5        3        0       24        2        0        7        9\n");
        var figures = watch.Read();
        Assert.Equal(["dm-0", "sda", "vdb"], figures.Select(d => d.Name));
        Assert.Equal((10UL, 3UL, 1UL, 5UL, 2UL, 7UL, 9UL), (figures[1].Stats.ReadIos, figures[1].Stats.WriteIos, figures[1].Stats.ReadMerges, figures[1].Stats.ReadTicks, figures[1].Stats.WriteTicks, figures[1].Stats.IoTicks, figures[1].Stats.TimeInQueue));
        Assert.Equal(2, figures[0].Slaves.Count);
        Assert.Equal(10UL, figures[0].Slaves[0].ReadIos);
        Assert.Equal(0UL, figures[0].Stats.ReadIos);

        static void Block(string sys, string path, bool disk)
        {
            var directory = Path.Combine(sys, path);
            Directory.CreateDirectory(directory);
            if (disk)
            {
                Directory.CreateDirectory(Path.Combine(directory, "queue"));
            }

            File.WriteAllText(Path.Combine(directory, "stat"), "       0        0        0        0        0        0        0        0        0        0        0\n");
        }
    }

    [Fact]
    public async Task A_file_on_a_disk_gets_the_section_in_every_format_and_the_null_device_none()
    {
        using var dir = new TempDirectory("diskstats");
        var path = dir.CreateFile("small.img", 1 << 20, seed: 5);

        // fio's rule: the disk of the file's device, when sysfs has one (not on tmpfs or overlayfs).
        var disk = DiskWatch.Start(path)?.Names[0];

        await using var bench = ActorBlkProcess.Start("bench", $"--device=file:{path}", "--rw=read", "--bs=4k", "--direct=1",
            "--jit_warmup=0", "--eta=never", "--output-format=terse,json,normal");
        Assert.Equal(0, await bench.WaitForExitAsync(Within));
        var output = bench.StandardOutput;
        var lines = output.Split('\n');
        var json = JsonDocument.Parse(string.Join('\n', lines.Skip(1).TakeWhile(l => l != "}")) + "\n}").RootElement; // terse, JSON, normal
        if (disk is null)
        {
            Assert.DoesNotContain("Disk stats", output, StringComparison.Ordinal);
            Assert.False(json.TryGetProperty("disk_util", out _));
            return;
        }

        Assert.Matches($@";{disk};\d+;\d+;\d+;\d+;\d+;\d+;\d+;\d+\.\d\d%$", lines[0]);
        Assert.Equal(disk, json.GetProperty("disk_util")[0].GetProperty("name").GetString());
        Assert.True(json.GetProperty("disk_util")[0].GetProperty("read_ios").GetInt64() > 0);
        Assert.Matches($@"\n\nDisk stats \(read/write\):\n  {disk}: ios=\d+/\d+, merge=\d+/\d+, ticks=\d+/\d+, in_queue=\d+, util=\d+\.\d\d%\n$", output);

        // The null device lies on no disk of the machine.
        await using var null0 = ActorBlkProcess.Start("bench", "--size=1m", "--jit_warmup=0", "--eta=never", "--output-format=terse,json,normal");
        Assert.Equal(0, await null0.WaitForExitAsync(Within));
        Assert.DoesNotContain("Disk stats", null0.StandardOutput, StringComparison.Ordinal);
        Assert.DoesNotContain("disk_util", null0.StandardOutput, StringComparison.Ordinal);
        Assert.Equal(121, null0.StandardOutput.Split('\n')[0].Split(';').Length);
    }

    private static BenchResult Result(int version = 3)
    {
        var options = new BenchOptions { Name = "disk", TerseVersion = version };
        var reads = new OpStats { Ios = 2, Bytes = 8192 };
        reads.Total.RecordTicks(1000);
        reads.Total.RecordTicks(2000);
        return new BenchResult(options, reads, new OpStats(), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1),
            Submitted: 2, Completed: 2, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec");
    }
}
