"""`python -m services.auth.new_api_key`: print a fresh API key, e.g. for
`EMPIRE_AUTH_BOOTSTRAP_API_KEY`. Nothing is stored; auth stores it on first start."""

from services.auth.api_key_format import generate_api_key

if __name__ == "__main__":
    print(generate_api_key().secret)
