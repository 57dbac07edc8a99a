using System.Net;
using System.Net.Sockets;
using ActorBlk.Hardware.Interop;

namespace ActorBlk.Hardware.Nbd;

/// <summary>
/// The Unix domain socket an <see cref="NbdServer"/> listens on (<see cref="NbdServerOptions.UnixSocket"/>):
/// bound over the socket file a server that did not stop cleanly left behind, never over a live
/// server's socket nor over a file that is not a socket, and its file removed at the stop.
/// </summary>
internal static class NbdUnixListener
{
    /// <summary>The socket file this server bound, by its identity: it is removed at the stop only while the path is still that file.</summary>
    internal readonly record struct SocketFile(string Path, uint DevMajor, uint DevMinor, ulong Ino);

    /// <summary>
    /// Binds and listens on <paramref name="socket"/> (a path, or <c>@NAME</c> in the abstract
    /// namespace; checked by <see cref="NbdServerOptions.UnixSocketProblem"/>). A socket file at the
    /// path that nothing listens on (a connection to it is refused: its server was killed) is
    /// removed first and the removal logged; nbdkit 1.32 refuses to start over one.
    /// </summary>
    /// <param name="socket">The path, or <c>@NAME</c>.</param>
    /// <param name="backlog">The listen backlog.</param>
    /// <param name="log">Receives the line saying a stale socket was removed; may be null.</param>
    /// <param name="file">The bound socket file, for <see cref="Remove"/>; null for an abstract name.</param>
    /// <exception cref="IOException">
    /// Another server listens on the socket, the path is something other than a socket (left
    /// alone), or the socket cannot be bound (its directory missing or not writable); the message
    /// says which.
    /// </exception>
    internal static Socket Listen(string socket, int backlog, Action<string>? log, out SocketFile? file)
    {
        file = null;
        var abstractName = socket[0] == '@';
        var shown = $"unix:{ControlCharacters.Escape(socket)}";
        if (!abstractName)
        {
            ClearStale(socket, shown, log);
        }

        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            try
            {
                listener.Bind(new KeptFileEndPoint(abstractName ? "\0" + socket[1..] : socket));
            }
            catch (SocketException ex)
            {
                throw new IOException($"cannot listen on {shown}: {BindProblem(socket, abstractName, ex)}", ex);
            }

            file = abstractName ? null : Identify(socket);
            listener.Listen(backlog);
            return listener;
        }
        catch
        {
            if (file is { } bound)
            {
                _ = Remove(bound);
                file = null;
            }

            listener.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Removes the socket file if the path is still the socket this server bound: a file put there
    /// since (the socket removed by hand and another server started on the path) is left alone.
    /// </summary>
    /// <returns>Why the removal failed, or null (also when the path is no longer this server's socket).</returns>
    internal static string? Remove(SocketFile file)
    {
        if (Identify(file.Path) != file)
        {
            return null;
        }

        return LibC.Unlink(file.Path) < 0 && LibC.LastErrno is var errno && errno != LibC.ENOENT
            ? $"removing the socket '{ControlCharacters.Escape(file.Path)}' failed ({LibC.Describe(errno)})"
            : null;
    }

    /// <summary>
    /// Who is at the other end of an accepted Unix socket connection, for the log: a Unix peer has
    /// no address (its end is unnamed), so its process and user as the kernel recorded them at
    /// connect (<c>SO_PEERCRED</c>): <c>pid 4242 (uid 1000)</c>.
    /// </summary>
    internal static string Peer(Socket socket)
    {
        const int SolSocket = 1;
        const int SoPeerCred = 17;
        Span<byte> credentials = stackalloc byte[12]; // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
        try
        {
            if (socket.GetRawSocketOption(SolSocket, SoPeerCred, credentials) < 12)
            {
                return "a local process";
            }
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException or PlatformNotSupportedException)
        {
            return "a local process";
        }

        var pid = BitConverter.ToInt32(credentials);
        var uid = BitConverter.ToUInt32(credentials[4..]);
        return string.Create(System.Globalization.CultureInfo.InvariantCulture, $"pid {pid} (uid {uid})");
    }

    // A socket file at the path: removed when nothing listens on it, else refused (left alone).
    private static unsafe void ClearStale(string path, string shown, Action<string>? log)
    {
        var escaped = ControlCharacters.Escape(path);
        var statx = default(LibC.Statx);
        if (LibC.StatX(LibC.AT_FDCWD, path, LibC.AT_SYMLINK_NOFOLLOW, LibC.STATX_BASIC_STATS, &statx) < 0)
        {
            var errno = LibC.LastErrno;
            if (errno == LibC.ENOENT)
            {
                return; // nothing there (or no directory, which the bind names)
            }

            throw new IOException($"cannot listen on {shown}: cannot look at '{escaped}' ({LibC.Describe(errno)})");
        }

        var kind = statx.Mode & LibC.S_IFMT;
        if (kind != LibC.S_IFSOCK)
        {
            throw new IOException($"cannot listen on {shown}: '{escaped}' is {LibC.DescribeFileType(kind)}, not a socket, and is left alone: remove it, or choose another path");
        }

        // A socket: is a server listening on it? A non-blocking connect answers at once (a Unix
        // socket's connect never waits): accepted (or the backlog full, EAGAIN) means a live
        // server; ECONNREFUSED means none, the socket file of a server that did not stop cleanly.
        using (var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified) { Blocking = false })
        {
            try
            {
                probe.Connect(new UnixDomainSocketEndPoint(path));
                throw new IOException($"cannot listen on {shown}: another server listens on the socket (it accepted a connection: another ActorBlk node, qemu-nbd or nbdkit?); stop it, or choose another path");
            }
            catch (SocketException ex) when (ex.SocketErrorCode == SocketError.WouldBlock)
            {
                throw new IOException($"cannot listen on {shown}: another server listens on the socket (its queue of connections waiting to be accepted is full); stop it, or choose another path");
            }
            catch (SocketException ex) when (ex.SocketErrorCode == SocketError.AccessDenied)
            {
                throw new IOException($"cannot listen on {shown}: a socket is there that this user may not connect to (Permission denied), so whether a server listens on it cannot be told; it is left alone: remove it, or choose another path");
            }
            catch (SocketException ex) when (ex.SocketErrorCode != SocketError.ConnectionRefused)
            {
                throw new IOException($"cannot listen on {shown}: a socket is there, and connecting to it to see whether a server listens on it failed ({ex.Message}); it is left alone: remove it, or choose another path");
            }
            catch (SocketException)
            {
                // Connection refused: nothing listens on it.
            }
        }

        // Between the probe and the bind, another server starting on the same path could bind it;
        // the bind then fails with EADDRINUSE, named below.
        if (LibC.Unlink(path) < 0 && LibC.LastErrno is var error && error != LibC.ENOENT)
        {
            throw new IOException($"cannot listen on {shown}: the socket there is stale (nothing listens on it), and removing it failed ({LibC.Describe(error)})");
        }

        log?.Invoke($"NBD server: removed the stale socket '{escaped}' (nothing listened on it: a server that did not stop cleanly left it) to listen there");
    }

    private static unsafe SocketFile? Identify(string path)
    {
        var statx = default(LibC.Statx);
        return LibC.StatX(LibC.AT_FDCWD, path, LibC.AT_SYMLINK_NOFOLLOW, LibC.STATX_BASIC_STATS, &statx) < 0 || (statx.Mode & LibC.S_IFMT) != LibC.S_IFSOCK
            ? null
            : new SocketFile(path, statx.DevMajor, statx.DevMinor, statx.Ino);
    }

    // Why bind(2) failed, in words: .NET's message for ENOENT is "Cannot assign requested address".
    private static unsafe string BindProblem(string socket, bool abstractName, SocketException ex)
    {
        if (ex.SocketErrorCode == SocketError.AddressAlreadyInUse)
        {
            return abstractName
                ? "another server listens on the abstract socket (the name is taken); stop it, or choose another name"
                : "the path was taken while the server started (another server starting on it?); choose another path";
        }

        if (abstractName)
        {
            return ex.Message;
        }

        var directory = Path.GetDirectoryName(socket) is { Length: > 0 } parent ? parent : "/";
        var shown = ControlCharacters.Escape(directory);
        var statx = default(LibC.Statx);
        if (LibC.StatX(LibC.AT_FDCWD, directory, 0, LibC.STATX_BASIC_STATS, &statx) < 0)
        {
            var errno = LibC.LastErrno;
            return errno == LibC.ENOENT
                ? $"its directory '{shown}' does not exist"
                : $"cannot reach its directory '{shown}' ({LibC.Describe(errno)})";
        }

        if ((statx.Mode & LibC.S_IFMT) != LibC.S_IFDIR)
        {
            return $"'{shown}' is {LibC.DescribeFileType(statx.Mode & LibC.S_IFMT)}, not a directory";
        }

        if (ex.SocketErrorCode == SocketError.AccessDenied)
        {
            return $"this user may not create the socket in '{shown}' (Permission denied)";
        }

        // .NET names few of bind(2)'s errors: a read-only file system (EROFS) said "Unknown socket
        // error", and ENOENT from a file system that takes no socket file (/proc) "Cannot assign
        // requested address". Whether the directory takes a new file, the kernel says with its errno.
        if (LibC.FAccessAt(LibC.AT_FDCWD, directory, LibC.W_OK, LibC.AT_EACCESS) < 0)
        {
            return $"cannot create the socket in '{shown}' ({LibC.Describe(LibC.LastErrno)})";
        }

        return ex.SocketErrorCode == SocketError.AddressNotAvailable
            ? $"cannot create the socket in '{shown}' ({LibC.Describe(LibC.ENOENT)})"
            : ex.Message;
    }

    /// <summary>
    /// A Unix socket address that .NET does not delete at the socket's disposal: a socket bound to
    /// a <see cref="UnixDomainSocketEndPoint"/> deletes whatever is at its path when disposed, a
    /// file put there after the socket was moved away or removed included. The file is
    /// <see cref="Remove"/>'s, which deletes it only while it is still this server's socket.
    /// </summary>
    private sealed class KeptFileEndPoint(string name) : EndPoint
    {
        private readonly UnixDomainSocketEndPoint _address = new(name);

        public override AddressFamily AddressFamily => AddressFamily.Unix;

        public override SocketAddress Serialize() => _address.Serialize();

        public override EndPoint Create(SocketAddress socketAddress) => _address.Create(socketAddress);

        public override string ToString() => _address.ToString();
    }
}
