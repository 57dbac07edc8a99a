using System.Text.Json;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// fio lays out a job's regular file that is smaller than the job's size (filesetup.c
/// <c>setup_files</c>, "Laying out IO file"); the bench refused such a <c>--device=file:PATH</c>
/// ("option --size: N bytes is more than the device holds", exit 2). Now it extends the file
/// before the device opens it, keeping its bytes; never a block device, never shrinking.
/// </summary>
public sealed class BenchFileLayoutSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task A_file_smaller_than_size_is_extended_before_the_run_its_bytes_kept()
    {
        using var dir = new TempDirectory("layout");
        var path = dir.CreateFile("small.img", 1 << 20, seed: 7);
        var head = ReadHead(path);

        // Size-bound: 4 MiB in 4 KiB reads, once over the whole (extended) region.
        await using var bench = ActorBlkProcess.Start("bench", $"--device=file:{path}", "--size=4m", "--rw=read", "--bs=4k",
            "--direct=0", "--jit_warmup=0", "--eta=never", "--output-format=json");
        Assert.Equal(0, await bench.WaitForExitAsync(Within));

        Assert.Equal(4L << 20, new FileInfo(path).Length);
        Assert.Equal(head, ReadHead(path));
        Assert.Contains("actorblk: Laying out IO file (1 file / 4MiB)", bench.StandardError, StringComparison.Ordinal);
        var read = JsonDocument.Parse(bench.StandardOutput).RootElement.GetProperty("jobs")[0].GetProperty("read");
        Assert.Equal(1024, read.GetProperty("total_ios").GetInt64());
    }

    [Fact]
    public async Task A_file_larger_than_size_is_not_shrunk()
    {
        using var dir = new TempDirectory("layout");
        var path = dir.CreateFile("large.img", 8 << 20);

        await using var bench = ActorBlkProcess.Start("bench", $"--device=file:{path}", "--size=4m", "--rw=read", "--bs=4k",
            "--direct=0", "--jit_warmup=0", "--eta=never", "--output-format=json");
        Assert.Equal(0, await bench.WaitForExitAsync(Within));

        Assert.Equal(8L << 20, new FileInfo(path).Length);
        Assert.DoesNotContain("Laying out", bench.StandardError, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_file_that_cannot_be_extended_fails_the_run_with_the_reason_and_stays_as_it_was()
    {
        using var dir = new TempDirectory("layout");
        var path = dir.CreateFile("small.img", 1 << 20, seed: 3);

        // 4 PiB: more than any file system here has free (and past ext4's largest file).
        await using var bench = ActorBlkProcess.Start("bench", $"--device=file:{path}", "--size=4096t", "--rw=read", "--runtime=1",
            "--jit_warmup=0", "--eta=never");
        Assert.Equal(1, await bench.WaitForExitAsync(Within));

        Assert.Contains($"cannot use '{path}': cannot extend it from 1048576 to {4096L << 40} bytes: ", bench.StandardError, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", bench.Output, StringComparison.Ordinal);
        Assert.Equal(1L << 20, new FileInfo(path).Length);
    }

    [Fact]
    public void A_file_another_process_holds_locked_is_not_touched()
    {
        using var dir = new TempDirectory("layout");
        var path = dir.CreateFile("locked.img", 4096);

        // .NET takes flock(LOCK_EX) for FileShare.None, as a device holding the file does.
        using (new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.None))
        {
            var error = Assert.Throws<BlockDeviceOpenException>(() => FileBlockDriver.ExtendFile(path, 1 << 20));
            Assert.Equal(OpenFailure.Busy, error.Cause);
        }

        Assert.Equal(4096, new FileInfo(path).Length);
        Assert.Equal(4096, FileBlockDriver.ExtendFile(path, 1 << 20));
        Assert.Equal(1L << 20, new FileInfo(path).Length);
    }

    [Fact]
    public void Only_a_smaller_regular_file_is_extended()
    {
        using var dir = new TempDirectory("layout");
        Assert.Null(FileBlockDriver.ExtendFile(dir.File("missing.img"), 1 << 20));
        Assert.False(File.Exists(dir.File("missing.img")));
        Assert.Null(FileBlockDriver.ExtendFile(dir.CreateFile("same.img", 1 << 20), 1 << 20));
        Assert.Null(FileBlockDriver.ExtendFile("/dev/null", 1 << 20));   // a device node, not a regular file
    }

    private static byte[] ReadHead(string path)
    {
        var head = new byte[64 * 1024];
        using var stream = File.OpenRead(path);
        stream.ReadExactly(head);
        return head;
    }
}
