using Xunit;

namespace ActorBlk.Actors.Tests.Hosting;

/// <summary>The README shows the embedding example that <see cref="ReadmeExample"/> compiles and runs.</summary>
public sealed class ReadmeSpec
{
    private static string RepositoryRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "ActorBlk.sln")))
        {
            dir = dir.Parent;
        }

        return dir?.FullName ?? throw new DirectoryNotFoundException("The repository root (ActorBlk.sln) was not found.");
    }

    [Fact]
    public void The_readme_embedding_example_is_the_compiled_one()
    {
        var root = RepositoryRoot();
        var source = File.ReadAllLines(Path.Combine(root, "Tests", "ActorBlk.Actors.Tests", "Hosting", "ReadmeExample.cs"));
        var begin = Array.FindIndex(source, l => l.Trim() == "// begin README example");
        var end = Array.FindIndex(source, l => l.Trim() == "// end README example");
        Assert.True(begin >= 0 && end > begin, "ReadmeExample.cs lost its markers.");

        var body = source[(begin + 1)..end];
        var indent = body.Where(l => l.Trim().Length > 0).Min(l => l.Length - l.TrimStart().Length);
        var example = string.Join("\n", body.Select(l => l.Length >= indent ? l[indent..] : l.Trim()));
        var readme = File.ReadAllText(Path.Combine(root, "README.md")).Replace("\r\n", "\n", StringComparison.Ordinal);

        Assert.Contains("```csharp\n" + example + "\n```", readme);
    }
}
