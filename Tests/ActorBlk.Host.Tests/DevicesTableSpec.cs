using ActorBlk.Actors.Clustering;
using ActorBlk.Host.Commands;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>The <c>actorblk devices</c> table README shows is the one the command prints.</summary>
public sealed class DevicesTableSpec
{
    [Fact]
    public void The_readme_example_is_what_format_prints()
    {
        // A README walk-through and a review found the example's columns wider than the command's.
        var table = DevicesCommand.Format(
        [
            new ClusterDevice("vol-a", "127.0.0.1:4053", 1, 256L << 20, 512, 1, false, "live", "nbd://127.0.0.1:35963/vol-a"),
            new ClusterDevice("vol-b", "127.0.0.1:4054", 2, 256L << 20, 512, 1, false, "live", "nbd://127.0.0.1:33165/vol-b"),
            new ClusterDevice("vol-c", "127.0.0.1:4055", 3, 256L << 20, 512, 1, false, "live", "nbd://127.0.0.1:34409/vol-c"),
        ]).Replace("\r\n", "\n", StringComparison.Ordinal);

        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "ActorBlk.sln")))
        {
            dir = dir.Parent;
        }

        var readme = File.ReadAllText(Path.Combine(dir!.FullName, "README.md")).Replace("\r\n", "\n", StringComparison.Ordinal);
        Assert.Contains(table, readme, StringComparison.Ordinal);
    }
}
