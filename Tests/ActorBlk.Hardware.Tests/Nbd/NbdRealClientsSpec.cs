using System.Globalization;
using System.Text.RegularExpressions;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// The export against real NBD clients, not only our own: nbdinfo and nbdcopy (libnbd), qemu-img
/// and qemu-io (qemu's NBD block driver) and fio's nbd engine. .ci/run installs them (Debian
/// libnbd-bin, qemu-utils, fio).
/// </summary>
public sealed partial class NbdRealClientsSpec
{
    [SkippableFact]
    public async Task Nbdinfo_lists_the_exports_and_reports_size_block_sizes_and_flags()
    {
        Skip.IfNot(ExternalTool.Exists("nbdinfo"), "nbdinfo (libnbd-bin) is not installed");
        await using var fx = NbdExportFixture.Start();
        var info = await ExternalTool.RunAsync("nbdinfo", fx.Uri("mem0"));
        Assert.Matches(@"export-size:\s+67108864", info);
        Assert.Matches(@"block_size_minimum:\s+512", info);
        Assert.Matches(@"block_size_maximum:\s+33554432", info);
        Assert.Matches(@"can_multi_conn:\s+true", info);
        Assert.Matches(@"can_trim:\s+true", info);
        Assert.Matches(@"can_fast_zero:\s+true", info);
        Assert.Matches(@"is_read_only:\s+false", info);
        Assert.Contains("base:allocation", info, StringComparison.Ordinal);

        // The description ends with the device's identity (README, "A device's identity"), in
        // the export's information and in the listing's details.
        Assert.Matches(@"description:\s+ActorBlk null device mem0, 512-byte blocks, diskseq \d+@[0-9a-f]{32}", info);

        var ro = await ExternalTool.RunAsync("nbdinfo", fx.Uri("ro0"));
        Assert.Matches(@"is_read_only:\s+true", ro);

        var list = await ExternalTool.RunAsync("nbdinfo", "--list", fx.Uri(string.Empty));
        Assert.Contains("export=\"mem0\"", list.Replace(": ", "=", StringComparison.Ordinal), StringComparison.Ordinal);
        Assert.Contains("ro0", list, StringComparison.Ordinal);
        Assert.Matches(@"description:\s+ActorBlk null device ro0, 512-byte blocks, diskseq \d+@[0-9a-f]{32}", list);

        // A fresh memory-backed export is one hole.
        var map = await ExternalTool.RunAsync("nbdinfo", "--map", fx.Uri("mem0"));
        Assert.Matches(@"0\s+67108864\s+3\s+hole,zero", map);
    }

    [SkippableFact]
    public async Task Nbdinfo_map_shows_written_blocks_as_data_and_the_rest_as_holes()
    {
        Skip.IfNot(ExternalTool.Exists("nbdinfo"), "nbdinfo (libnbd-bin) is not installed");
        Skip.IfNot(ExternalTool.Exists("qemu-io"), "qemu-io (qemu-utils) is not installed");
        await using var fx = NbdExportFixture.Start();
        await ExternalTool.RunAsync("qemu-io", "-f", "raw",
            "-c", "write -P 0xab 1M 8k",
            "-c", "write -P 0xcd 4M 4k",
            "-c", "write -P 0xef 8M 64k",
            "-c", "discard 8M 32k",
            fx.Uri("mem0"));
        var map = await ExternalTool.RunAsync("nbdinfo", "--map", fx.Uri("mem0"));
        var rows = MapRow().Matches(map).Select(m => (long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), long.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture), m.Groups[3].Value)).ToArray();
        Assert.Equal(
            [
                (0L, 1L << 20, "hole,zero"), (1L << 20, 8192L, "data"), ((1L << 20) + 8192, (3L << 20) - 8192, "hole,zero"),
                (4L << 20, 4096L, "data"), ((4L << 20) + 4096, (4L << 20) - 4096 + (32L << 10), "hole,zero"),
                ((8L << 20) + (32L << 10), 32L << 10, "data"), ((8L << 20) + (64L << 10), NbdExportFixture.MemSize - (8L << 20) - (64L << 10), "hole,zero"),
            ],
            rows);
    }

    [SkippableFact]
    public async Task Qemu_io_writes_reads_back_and_verifies_patterns_with_flush_discard_and_zeroes()
    {
        Skip.IfNot(ExternalTool.Exists("qemu-io"), "qemu-io (qemu-utils) is not installed");
        await using var fx = NbdExportFixture.Start();
        var output = await ExternalTool.RunAsync("qemu-io", "-f", "raw",
            "-c", "write -P 0xab 0 1M",
            "-c", "write -f -P 0xcd 1M 64k",
            "-c", "flush",
            "-c", "read -P 0xab 0 1M",
            "-c", "read -P 0xcd 1M 64k",
            "-c", "discard 0 64k",
            "-c", "read -P 0 0 64k",
            "-c", "write -z 64k 64k",
            "-c", "read -P 0 64k 64k",
            "-c", "aio_write -P 0x11 2M 4k",
            "-c", "aio_write -P 0x22 3M 4k",
            "-c", "aio_flush",
            "-c", "read -P 0x22 3M 4k",
            fx.Uri("mem0"));
        Assert.DoesNotContain("Pattern verification failed", output, StringComparison.Ordinal);
        Assert.DoesNotContain("failed", output, StringComparison.OrdinalIgnoreCase);

        // qemu wrote to the device behind the export.
        var check = new byte[4096];
        await fx.Mem.ReadAsync(2 << 20, check);
        Assert.All(check, b => Assert.Equal(0x11, b));

        var refused = await ExternalTool.RunUncheckedAsync("qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", fx.Uri("ro0"));
        Assert.True(refused.ExitCode != 0 || refused.Output.Contains("failed", StringComparison.OrdinalIgnoreCase), refused.Output);
    }

    [SkippableFact]
    public async Task Qemu_img_copies_an_image_in_and_out_and_compares_equal()
    {
        Skip.IfNot(ExternalTool.Exists("qemu-img"), "qemu-img (qemu-utils) is not installed");
        await using var fx = NbdExportFixture.Start();
        using var dir = new ActorBlk.Testing.TempDirectory();
        var source = Path.Combine(dir.Path, "source.raw");
        var back = Path.Combine(dir.Path, "back.raw");
        var bytes = new byte[NbdExportFixture.MemSize];
        new Random(11).NextBytes(bytes.AsSpan(0, 8 << 20));
        await File.WriteAllBytesAsync(source, bytes);

        var info = await ExternalTool.RunAsync("qemu-img", "info", fx.Uri("mem0"));
        Assert.Contains("64 MiB", info, StringComparison.Ordinal);
        await ExternalTool.RunAsync("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", source, fx.Uri("mem0"));
        await ExternalTool.RunAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", source, fx.Uri("mem0"));
        await ExternalTool.RunAsync("qemu-img", "convert", "-f", "raw", "-O", "raw", fx.Uri("mem0"), back);
        Assert.Equal(bytes, await File.ReadAllBytesAsync(back));
    }

    [SkippableFact]
    public async Task Nbdcopy_with_several_connections_copies_exactly()
    {
        Skip.IfNot(ExternalTool.Exists("nbdcopy"), "nbdcopy (libnbd-bin) is not installed");
        await using var fx = NbdExportFixture.Start();
        using var dir = new ActorBlk.Testing.TempDirectory();
        var source = Path.Combine(dir.Path, "source.raw");
        var back = Path.Combine(dir.Path, "back.raw");
        var bytes = new byte[NbdExportFixture.MemSize];
        new Random(5).NextBytes(bytes);
        await File.WriteAllBytesAsync(source, bytes);

        // CAN_MULTI_CONN lets nbdcopy use several connections to one export.
        await ExternalTool.RunAsync("nbdcopy", "--connections=4", "--requests=16", "--flush", source, fx.Uri("mem0"));
        await ExternalTool.RunAsync("nbdcopy", "--connections=4", fx.Uri("mem0"), back);
        Assert.Equal(bytes, await File.ReadAllBytesAsync(back));
    }

    [SkippableFact]
    public async Task Fio_nbd_engine_runs_verified_random_writes_at_queue_depth_32()
    {
        Skip.IfNot(ExternalTool.Exists("fio"), "fio is not installed");
        await using var fx = NbdExportFixture.Start();
        var output = await ExternalTool.RunAsync("fio", "--name=nbd", "--ioengine=nbd", $"--uri={fx.Uri("mem0")}",
            "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=16M", "--verify=crc32c", "--do_verify=1",
            "--verify_fatal=1", "--output-format=normal");
        Assert.Contains("nbd: (groupid=0", output, StringComparison.Ordinal);
        Assert.DoesNotContain("verify failed", output, StringComparison.OrdinalIgnoreCase);
        Assert.Matches(ErrZero(), output);
        await Condition.EventuallyAsync(() => fx.Mem.Queue.InFlightCount == 0, "every tag is free again");
    }

    [GeneratedRegex(@"^\s*(\d+)\s+(\d+)\s+\d+\s+(\S+)\s*$", RegexOptions.Multiline)]
    private static partial Regex MapRow();

    [GeneratedRegex(@"err=\s*0")]
    private static partial Regex ErrZero();
}
