namespace ActorBlk.Host;

/// <summary>The <c>actorblk</c> command.</summary>
public static class Program
{
    /// <summary>Entry point; returns 0 on success, 1 on failure, 2 on a usage error (see <see cref="Commands.CommandLine"/>).</summary>
    public static Task<int> Main(string[] args) => Commands.CommandLine.RunAsync(args, Console.Out, Console.Error);
}
