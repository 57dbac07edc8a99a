using System.Text.Json;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// A file device whose writes pass the process's file-size limit (<c>ulimit -f</c>,
/// <c>RLIMIT_FSIZE</c>): each such write fails with EFBIG, an <c>IoError</c>, and the process goes
/// on. Found by an outside audit: the kernel raises SIGXFSZ for such a write, whose default action
/// killed `actorblk bench` (exit 153) with every request in flight, on both engines, direct or
/// buffered.
/// </summary>
[Collection(OwnResourceProcessesCollection.Name)]
public sealed class FileSizeLimitSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(90);

    [Theory]
    [InlineData("io_uring", 1)]
    [InlineData("psync", 0)]
    public async Task Writes_past_the_file_size_limit_fail_with_an_io_error_and_the_process_lives(string engine, int direct)
    {
        using var dir = new TempDirectory("fsize");
        var path = dir.File("limited.img");
        using (var file = File.Create(path))
        {
            file.SetLength(16 << 20);
        }

        // The runtime's W^X double mapping grows a memory file as code is compiled, which the
        // limit would refuse (the runtime then aborts, exit 134), so it is off here, as it must be
        // for any .NET process under such a limit. The limit comes right after the start, long
        // before the jobs write.
        await using var bench = ActorBlkProcess.StartWithEnvironment(
            new Dictionary<string, string?> { ["DOTNET_EnableWriteXorExecute"] = "0" },
            "bench", $"--device=file:{path}", "--size=16m", "--rw=randwrite", "--bs=4k", "--iodepth=8",
            "--runtime=2", "--jit_warmup=0", $"--engine={engine}", $"--direct={direct}", "--output-format=json");
        bench.LimitFileSize(4 << 20);

        Assert.Equal(0, await bench.WaitForExitAsync(Within));
        using var report = JsonDocument.Parse(bench.StandardOutput);
        var job = report.RootElement.GetProperty("jobs")[0];
        Assert.Equal(5, job.GetProperty("error").GetInt32());
        Assert.True(job.GetProperty("write").GetProperty("total_ios").GetInt64() > 0, "writes below the limit succeed");
        var totals = report.RootElement.GetProperty("actorblk");
        Assert.True(totals.GetProperty("errors").GetInt64() > 0);
        Assert.Equal(totals.GetProperty("submitted").GetInt64(), totals.GetProperty("completed").GetInt64());
        Assert.Equal(0L, totals.GetProperty("double_completions").GetInt64());
        Assert.Equal(16L << 20, new FileInfo(path).Length);
    }
}
