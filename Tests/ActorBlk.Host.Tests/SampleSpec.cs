using System.Security.Cryptography;
using ActorBlk.Host.Tests.Support;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>The BlockCopy sample: an application embedding ActorBlk through Akka.Hosting.</summary>
public sealed class SampleSpec
{
    [Fact]
    public async Task BlockCopy_copies_a_file_onto_the_embedded_device_and_verifies_it()
    {
        var file = Path.Combine(Path.GetTempPath(), $"blockcopy-{Guid.NewGuid():N}.bin");
        await File.WriteAllBytesAsync(file, RandomNumberGenerator.GetBytes((3 << 20) + 1234));
        try
        {
            await using var sample = ActorBlkProcess.StartProgram(RepositoryFiles.Sample("BlockCopy"), file);

            Assert.Equal(0, await sample.WaitForExitAsync(TimeSpan.FromSeconds(60)));
            Assert.Contains($"copied {(3 << 20) + 1234} bytes in 49 writes onto copy0: verified", sample.Output);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Theory]
    [InlineData("--help", 0)]
    [InlineData("/nonexistent/blockcopy-source", 2)]
    public async Task BlockCopy_prints_its_usage_for_help_and_refuses_a_missing_file_without_a_stack_trace(string argument, int exitCode)
    {
        // A README walk-through ran `BlockCopy.dll --help`: it opened "--help" as the source file
        // and died of an unhandled FileNotFoundException (exit 134).
        await using var sample = ActorBlkProcess.StartProgram(RepositoryFiles.Sample("BlockCopy"), argument);

        Assert.Equal(exitCode, await sample.WaitForExitAsync(TimeSpan.FromSeconds(60)));
        Assert.Contains("usage: BlockCopy [FILE]", sample.Output + sample.StandardError, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", sample.StandardError, StringComparison.Ordinal);
    }
}
