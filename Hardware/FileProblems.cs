namespace ActorBlk.Hardware;

/// <summary>
/// Words for a configured file that could not be read. .NET reports opening a directory as a file
/// as "Access to the path is denied", which sends an operator after permissions that are fine;
/// a directory is named as such instead.
/// </summary>
internal static class FileProblems
{
    /// <summary>What went wrong reading <paramref name="path"/>: that it is a directory, or <paramref name="error"/>'s message.</summary>
    public static string Describe(string path, Exception error) =>
        Directory.Exists(path) ? $"'{path}' is a directory, not a file" : error.Message;
}
