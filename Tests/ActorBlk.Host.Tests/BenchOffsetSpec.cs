using System.Text.Json;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Topology;
using ActorBlk.Host.Bench;
using ActorBlk.Host.Commands;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// fio's <c>offset</c> (alias <c>fileoffset</c>) and <c>offset_increment</c>: each job's region is
/// <c>[offset, offset + size)</c> (fio 3.33 filesetup.c <c>get_start_offset</c>, <c>setup_files</c>),
/// <c>size</c> defaulting to the rest of the device; <c>N%</c> is a share of the file's or
/// device's size rounded up to the block size (<c>offset_align</c>'s default). The bench had no
/// <c>--offset</c>: every job covered <c>[0, size)</c>. The numbers are fio 3.33's on a 4 MiB file
/// (<c>--write_lat_log --log_offset=1</c>).
/// </summary>
public sealed class BenchOffsetSpec : IDisposable
{
    private const long MiB = 1 << 20;
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(120);

    private readonly string _config = Path.Combine(Path.GetTempPath(), $"actorblk-offset-{Guid.NewGuid():N}.conf");

    public BenchOffsetSpec()
    {
        File.WriteAllText(_config, """
            actorblk.topology.source = simulated
            actorblk.devices = [
              { name = ro0, size = 16m, memory_backed = on, read_only = on },
              { name = b4k, size = 16m, memory_backed = on, bs = 4096 } ]
            """);
    }

    public void Dispose() => File.Delete(_config);

    [Fact]
    public void The_command_line_reads_offsets_as_fio_does()
    {
        var bytes = BenchCommandLine.Parse("--offset=1m", "--offset_increment=64k", "--numjobs=2");
        Assert.Equal((MiB, (int?)null, 65536L, (int?)null), (bytes.Offset, bytes.OffsetPercent, bytes.OffsetIncrement, bytes.OffsetIncrementPercent));
        Assert.Equal(("1m", "64k"), bytes.OffsetTexts);

        var share = BenchCommandLine.Parse("--device=file:/tmp/x", "--fileoffset=10%", "--offset_increment=25%");
        Assert.Equal((0L, (int?)10, 0L, (int?)25), (share.Offset, share.OffsetPercent, share.OffsetIncrement, share.OffsetIncrementPercent));
        Assert.Equal(("10%", "25%"), share.OffsetTexts);

        // Not given: no echo in the JSON's job options, as fio's.
        Assert.Equal((null, null), BenchCommandLine.Parse().OffsetTexts);

        // Read in order with --kb_base, as --size.
        Assert.Equal(1_024_000L, BenchCommandLine.Parse("--kb_base=1000", "--offset=1024k", "--bs=4KiB").Offset);
        Assert.Equal(1_048_576L, BenchCommandLine.Parse("--offset=1m", "--kb_base=1000", "--bs=4KiB").Offset);
    }

    [Theory]
    [InlineData("--offset=1000", "option --offset: 1000 is not a multiple of 512.")]
    [InlineData("--offset_increment=100", "option --offset_increment: 100 is not a multiple of 512.")]
    [InlineData("--offset=2z", "option --offset: '2z' is a number of zones (fio's z suffix, for zonemode=zbd); the bench's devices are not zoned.")]
    [InlineData("--offset=101%", "option --offset: '101%' is not a share of the file's or device's size from 0% to 100%.")]
    [InlineData("--offset=1KiB", "option --offset: '1KiB' is 1000 bytes, not a multiple of 512: with fio's default kb_base=1024 KiB, MiB, GiB, TiB and PiB are powers of 1000, and k, m, g, t and p (kB, Ki ...) powers of 1024.")]
    [InlineData("--offset=50%", "option --offset: 50% is a share of an existing file's or device's size, and the null device the bench creates is as large as the jobs' regions: give it in bytes.")]
    // Past 2^63 - 1 bytes, the device the bench would create (a review: "option 'size':
    // 9223372036854775807 bytes is not a positive multiple of the block size (512)").
    [InlineData("--offset=8191p --size=1p", "option --offset: the jobs' regions end past 9223372036854775807 bytes, the largest a device can be.")]
    [InlineData("--offset_increment=4096p --numjobs=3 --size=4k", "option --offset_increment: the jobs' regions end past 9223372036854775807 bytes, the largest a device can be.")]
    public void A_bad_offset_is_a_usage_error_naming_the_option(string arg, string message) =>
        Assert.Equal(message, Assert.Throws<UsageException>(() => BenchCommandLine.Parse(arg.Split(' '))).Message);

    // fio 3.33 on a 4 MiB file, 4 KiB blocks (its logs' lowest and highest offset, and the I/O count).
    [Theory]
    [InlineData("--offset=10%", 0, 421888L, 3772416L)]                                      // 419430 rounded up: 921 reads from 421888
    [InlineData("--offset=1m", 0, MiB, 3 * MiB)]                                            // size: the rest
    [InlineData("--offset=1m --size=1m", 0, MiB, MiB)]
    [InlineData("--offset=1m --offset_increment=1m --numjobs=3 --size=512k", 2, 3 * MiB, 512 * 1024L)]
    [InlineData("--offset_increment=25% --numjobs=2", 1, MiB, 3 * MiB)]                     // 768 reads from 1 MiB
    [InlineData("--offset=3m --size=50%", 0, 3 * MiB, MiB)]                                 // 50% of the file, at most the rest
    [InlineData("--offset=10% --offset_increment=3584 --numjobs=2", 1, 425984L, 3768320L)]  // the sum 423014 rounded up, not 421888 + 3584
    public void A_jobs_region_is_fios(string args, int job, long start, long length)
    {
        var options = BenchCommandLine.Parse([.. args.Split(' '), "--device=file:/tmp/x", "--bs=4k"]);
        Assert.Equal(new IoRegion(start, length), options.RegionOf(job, 4 * MiB));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Every_io_stays_in_its_jobs_region(bool random)
    {
        var pattern = random ? IoPattern.RandRead : IoPattern.Read;
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = $"off{(int)pattern}", Size = 16 * MiB }, CpuTopology.Simulated(2));
        var options = new BenchOptions
        {
            Pattern = pattern, IoDepth = 4, NumJobs = 2, Size = MiB, Offset = 4 * MiB, OffsetIncrement = 8 * MiB, LatLog = "unused",
        };
        var run = new BenchRun(options, device, CpuSet.Of(0, 1));
        var result = await run.RunAsync().WaitAsync(TimeSpan.FromSeconds(60));

        Assert.Equal(512, result.Completed);
        var jobs = run.JobLogs;
        Assert.Equal(2, jobs.Count);
        foreach (var (logs, start) in jobs.Zip(new[] { 4 * MiB, 12 * MiB }))
        {
            var offsets = IoLog.Merge(logs, iops: false).Select(e => e.Offset).ToList();
            Assert.Equal(256, offsets.Count);
            Assert.All(offsets, o => Assert.InRange(o, start, start + MiB - 4096));
            if (pattern == IoPattern.Read)
            {
                // In order, once over the region: each block once.
                Assert.Equal(Enumerable.Range(0, 256).Select(b => start + (b * 4096L)), offsets.Order());
            }
        }
    }

    [Fact]
    public async Task The_run_reads_inside_the_region_and_the_json_echoes_the_offset()
    {
        var dir = Directory.CreateTempSubdirectory("actorblk-offset-");
        try
        {
            var prefix = Path.Combine(dir.FullName, "o");
            await using var bench = ActorBlkProcess.Start("bench", "--config", _config, "--device=ro0", "--rw=randread", "--bs=4k", "--offset=4m", "--size=2m",
                $"--write_lat_log={prefix}", "--log_offset=1", "--output-format=json");
            Assert.Equal(0, await bench.WaitForExitAsync(Within));

            var job = JsonDocument.Parse(bench.StandardOutput).RootElement.GetProperty("jobs")[0];
            Assert.Equal(512, job.GetProperty("read").GetProperty("total_ios").GetInt64());
            Assert.Equal("4m", job.GetProperty("job options").GetProperty("offset").GetString());
            Assert.False(job.GetProperty("job options").TryGetProperty("offset_increment", out _));
            var offsets = (await File.ReadAllLinesAsync($"{prefix}_lat.1.log")).Select(l => long.Parse(l.Split(", ")[4], System.Globalization.CultureInfo.InvariantCulture)).ToList();
            Assert.Equal(512, offsets.Count);
            Assert.All(offsets, o => Assert.InRange(o, 4 * MiB, (6 * MiB) - 4096));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Theory]
    [InlineData("ro0", "--offset=20m", "option --offset: 20971520 bytes leaves no block of 4096 bytes before the device's end (16777216 bytes).")]
    [InlineData("ro0", "--offset=16m", "option --offset: 16777216 bytes leaves no block of 4096 bytes before the device's end (16777216 bytes).")]
    [InlineData("ro0", "--offset=8m --size=12m", "option --offset: 8388608 bytes and --size's 12582912 bytes end at 20971520, past the device's end (16777216 bytes).")]
    [InlineData("ro0", "--offset_increment=8m --numjobs=3 --size=4m", "option --offset_increment: job 2's offset, 16777216 bytes, leaves no block of 4096 bytes before the device's end (16777216 bytes).")]
    [InlineData("b4k", "--offset=512", "option --offset: 512 bytes is not a multiple of the device's 4096-byte logical block size.")]
    public async Task An_offset_outside_the_device_or_off_its_logical_block_is_a_usage_error(string device, string args, string message)
    {
        await using var bench = ActorBlkProcess.Start(["bench", "--config", _config, $"--device={device}", "--rw=read", "--bs=4k", .. args.Split(' '), "--runtime=1"]);
        Assert.Equal(2, await bench.WaitForExitAsync(Within));
        Assert.Contains(message, bench.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", bench.Output, StringComparison.Ordinal);
    }

    // fio 3.33 without size=: a job whose offset is past the file's end fails alone at its setup
    // ("you need to specify valid offset="), as does one left less than a block before it
    // ("blocksize is larger than data set range"); the others run. (A 1 MiB file, 4 KiB blocks.)
    [Theory]
    [InlineData("--offset=512k --offset_increment=512k --numjobs=3", new[] { 1, 2 })]   // job 1 at the end, job 2 past it
    [InlineData("--offset_increment=1022k --numjobs=3", new[] { 1, 2 })]                // job 1 2 KiB before the end
    [InlineData("--offset_increment=512k --numjobs=2", new int[0])]
    [InlineData("--offset=512k --offset_increment=512k --numjobs=3 --size=512k", new int[0])] // with size=, fio lays the file out
    [InlineData("--offset=2m", new int[0])]                                             // every job: no run, a usage error as before
    public void A_job_past_the_end_without_size_fails_alone(string args, int[] failing)
    {
        var options = BenchCommandLine.Parse([.. args.Split(' '), "--device=file:/tmp/x", "--bs=4k"]);
        Assert.Equal(failing, options.FailingJobs(MiB));
    }

    [Fact]
    public void A_failing_jobs_message_is_fios_then_why()
    {
        var options = BenchCommandLine.Parse("--name=a", "--device=file:/tmp/x", "--bs=4k", "--numjobs=3", "--offset=512k", "--offset_increment=512k");
        Assert.Null(options.JobFailure(0, MiB));
        Assert.Equal("a: blocksize is larger than data set range (job 1: its offset, 1048576 bytes (--offset_increment), leaves no block of 4096 bytes before the device's end (1048576 bytes); the job is not run)", options.JobFailure(1, MiB));
        Assert.Equal("a: you need to specify valid offset= (job 2: its offset, 1572864 bytes (--offset_increment), is past the device's end (1048576 bytes); the job is not run)", options.JobFailure(2, MiB));
    }

    // fio 3.33, `fio --name=a --filename=F --rw=read --bs=4k --numjobs=3 --offset=512k
    // --offset_increment=512k --thread --group_reporting` on a 1 MiB file: jobs 1 and 2 fail with
    // the two messages, job 0 reads its 512 KiB (128 reads; only its log is written), the group
    // reports jobs=3 with err=0, and fio exits 2, one for each failed job. The bench refused the
    // whole run (exit 2 as a usage error, no report).
    [Fact]
    public async Task A_job_past_the_end_fails_alone_and_the_others_run_and_are_reported()
    {
        using var dir = new TempDirectory("offset");
        var path = dir.CreateFile("small.img", (int)MiB);
        var prefix = Path.Combine(dir.Path, "o");

        await using var bench = ActorBlkProcess.Start("bench", "--name=a", $"--device=file:{path}", "--rw=read", "--bs=4k", "--numjobs=3",
            "--offset=512k", "--offset_increment=512k", "--direct=0", "--jit_warmup=0", "--eta=never", $"--write_lat_log={prefix}", "--log_offset=1", "--output-format=json");
        Assert.Equal(2, await bench.WaitForExitAsync(Within));

        Assert.Contains("a: blocksize is larger than data set range (job 1: ", bench.StandardError, StringComparison.Ordinal);
        Assert.Contains("a: you need to specify valid offset= (job 2: ", bench.StandardError, StringComparison.Ordinal);
        var job = JsonDocument.Parse(bench.StandardOutput).RootElement.GetProperty("jobs")[0];
        Assert.Equal(0, job.GetProperty("error").GetInt32());
        Assert.Equal(128, job.GetProperty("read").GetProperty("total_ios").GetInt64());
        Assert.Equal(["o_clat.1.log", "o_lat.1.log", "o_slat.1.log"], Directory.GetFiles(dir.Path, "o_*").Select(Path.GetFileName).Order());
        var offsets = (await File.ReadAllLinesAsync($"{prefix}_lat.1.log")).Select(l => long.Parse(l.Split(", ")[4], System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.All(offsets, o => Assert.InRange(o, MiB / 2, MiB - 4096));
        Assert.Equal(MiB, new FileInfo(path).Length); // without size=, nothing is laid out
    }

    [Fact]
    public async Task A_file_is_laid_out_to_offset_plus_size()
    {
        using var dir = new TempDirectory("offset");
        var path = dir.CreateFile("small.img", (int)MiB);

        await using var bench = ActorBlkProcess.Start("bench", $"--device=file:{path}", "--offset=2m", "--size=1m", "--rw=read", "--bs=4k",
            "--direct=0", "--jit_warmup=0", "--eta=never", "--output-format=json");
        Assert.Equal(0, await bench.WaitForExitAsync(Within));

        Assert.Equal(3 * MiB, new FileInfo(path).Length);
        Assert.Contains("actorblk: Laying out IO file (1 file / 3MiB)", bench.StandardError, StringComparison.Ordinal);
        Assert.Equal(256, JsonDocument.Parse(bench.StandardOutput).RootElement.GetProperty("jobs")[0].GetProperty("read").GetProperty("total_ios").GetInt64());
    }

    // fio 3.33 on a 1 MiB file: offset=50% is 512 KiB of the file as it was, the file laid out to
    // 1.5 MiB, 256 reads from 512 KiB. The bench took the share of the laid-out file (768 KiB),
    // whose region then ended past it: a usage error.
    [Theory]
    [InlineData("--offset=50%", 1536)]
    [InlineData("--offset_increment=50% --numjobs=2", 1536)]
    public async Task A_share_offset_is_of_the_file_before_its_layout(string args, long laidOutKiB)
    {
        using var dir = new TempDirectory("offset");
        var path = dir.CreateFile("small.img", (int)MiB);
        var prefix = Path.Combine(dir.Path, "o");

        await using var bench = ActorBlkProcess.Start(["bench", $"--device=file:{path}", .. args.Split(' '), "--size=1m", "--rw=read", "--bs=4k",
            "--direct=0", "--jit_warmup=0", "--eta=never", "--group_reporting", $"--write_lat_log={prefix}", "--log_offset=1", "--output-format=json"]);
        Assert.Equal(0, await bench.WaitForExitAsync(Within));

        Assert.Equal(laidOutKiB * 1024, new FileInfo(path).Length);
        var offsets = (await File.ReadAllLinesAsync($"{prefix}_lat.{(args.Contains("numjobs", StringComparison.Ordinal) ? 2 : 1)}.log"))
            .Select(l => long.Parse(l.Split(", ")[4], System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(256, offsets.Count);
        Assert.Equal(MiB / 2, offsets.Min());
        Assert.Equal((3 * MiB / 2) - 4096, offsets.Max());
    }
}
