namespace ActorBlk.Host.Tests.Support;

/// <summary>Files of the repository the specs run against.</summary>
internal static class RepositoryFiles
{
    /// <summary>The repository's root (the directory of ActorBlk.sln).</summary>
    public static string Root()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "ActorBlk.sln")))
        {
            dir = dir.Parent;
        }

        return dir?.FullName ?? throw new DirectoryNotFoundException("repository root");
    }

    /// <summary>The repository's default hocon.conf (the README's set-up command serves it).</summary>
    public static string Hocon() => Path.Combine(Root(), "hocon.conf");

    /// <summary>
    /// The program of the sample <paramref name="name"/> in its own build output (the same
    /// configuration and target framework as the specs'), as `dotnet run --project Samples/NAME`
    /// runs it. Not the copy in the specs' output directory: that one is resolved with the test
    /// project's dependencies, where the ASP.NET Core shared framework (actorblk's, for its
    /// Prometheus endpoint) stands in for the Microsoft.Extensions packages the sample ships, and
    /// the sample, which does not run on that framework, then cannot load them.
    /// </summary>
    public static string Sample(string name)
    {
        var output = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
        var framework = output.Name;
        var configuration = output.Parent?.Name ?? throw new DirectoryNotFoundException("the specs' build configuration");
        var program = Path.Combine(Root(), "Samples", name, "bin", configuration, framework, name + ".dll");
        return File.Exists(program) ? program : throw new FileNotFoundException($"the {name} sample is not built", program);
    }
}
