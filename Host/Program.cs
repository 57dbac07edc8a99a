namespace ActorBlk.Host;

/// <summary>The <c>actorblk</c> command.</summary>
public static class Program
{
    /// <summary>Entry point; returns 0 on success, 1 on failure, 2 on a usage error (see <see cref="Commands.CommandLine"/>).</summary>
    public static async Task<int> Main(string[] args)
    {
        // The client commands' standard output reports a failed write, and a reader that went away
        // (Commands.StandardOutput). serve's is its log, which goes on whatever becomes of it.
        using var output = args is ["serve", ..] ? null : Commands.StandardOutput.Install();
        using var error = Commands.StandardOutput.InstallErrorGuard();
        return await Commands.CommandLine.RunAsync(args, Console.Out, Console.Error).ConfigureAwait(false);
    }
}
