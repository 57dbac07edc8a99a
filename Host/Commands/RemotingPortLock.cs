using System.Globalization;

namespace ActorBlk.Host.Commands;

/// <summary>
/// A lock file per remoting address and user, held by <c>serve</c> for as long as the node runs.
/// Akka's transport binds with <c>SO_REUSEPORT</c> on Linux, so two nodes of one user started on one
/// port at the same moment both bound it and shared its connections: the check for a listener
/// (<see cref="ActorBlk.Hardware.Interop.ListenSockets.ThrowIfInUse"/>) only sees a node that is
/// listening already (an outside CLI audit started two within 5 s, and both ran). The kernel lets
/// only sockets of the same user share a port that way, and the lock is per user: the second node
/// finds it held and stops before its actor system starts. The lock is <c>flock</c>'s (how .NET
/// opens a file with <see cref="FileShare.None"/> on Linux), so it goes with the process, however it
/// ends; the file itself stays in the temporary directory.
/// </summary>
internal static class RemotingPortLock
{
    /// <summary>The lock of <paramref name="host"/>:<paramref name="port"/>, or null when the port is 0 (any free one).</summary>
    /// <exception cref="CommandFailedException">Another node of this user holds the address.</exception>
    public static IDisposable? Acquire(string host, int port)
    {
        if (port == 0)
        {
            return null;
        }

        var path = PathOf(host, port);
        try
        {
            return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.None);
        }
        catch (IOException ex) when (ex is not FileNotFoundException and not DirectoryNotFoundException)
        {
            throw new CommandFailedException($"the remoting address {host}:{port} is in use: another ActorBlk node of this user is starting or running on it (it holds {path}); choose another with --port, or 0 for any free one");
        }
        catch (UnauthorizedAccessException)
        {
            // A temporary directory this user cannot write: the listener check alone decides.
            return null;
        }
    }

    /// <summary>The lock file of an address: in the temporary directory, named after the user, host and port.</summary>
    public static string PathOf(string host, int port)
    {
        var safe = new string([.. $"{Environment.UserName}-{host}".Select(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '-' or '_' ? c : '_')]);
        return Path.Combine(Path.GetTempPath(), string.Create(CultureInfo.InvariantCulture, $"actorblk-remoting-{safe}-{port}.lock"));
    }
}
