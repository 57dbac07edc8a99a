namespace ActorBlk.Host.Tests.Support;

/// <summary>Where the repository's files are, found from the test binaries upwards.</summary>
internal static class RepositoryFiles
{
    /// <summary>The repository's default hocon.conf (the README's set-up command serves it).</summary>
    public static string Hocon()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "ActorBlk.sln")))
        {
            dir = dir.Parent;
        }

        return Path.Combine(dir?.FullName ?? throw new DirectoryNotFoundException("repository root"), "hocon.conf");
    }
}
